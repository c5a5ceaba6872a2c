"""Score caches: one score per (model, instruction, query, passage), read and written in batches."""

from gateway.cache.base import CachePolicy, ScoreCache
from gateway.cache.memory import MemoryScoreCache

__all__ = ["CachePolicy", "ScoreCache", "MemoryScoreCache"]
