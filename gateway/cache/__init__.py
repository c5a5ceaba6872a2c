"""Score caches: one score per (model, instruction, query, passage), read and written in batches."""

from gateway.cache.base import CachePolicy, Lookup, PairKey, ScoreCache, list_digests, pair_keys, passage_digests
from gateway.cache.memory import MemoryScoreCache

__all__ = ["CachePolicy", "Lookup", "MemoryScoreCache", "PairKey", "ScoreCache", "list_digests", "pair_keys",
           "passage_digests"]
