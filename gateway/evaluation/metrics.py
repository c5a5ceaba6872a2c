"""Ranking metrics of one query's ranked list against its qrels, as trec_eval defines them.

Relevant means a qrel above 0. Precision divides by k even when fewer are ranked; NDCG uses
the grade as gain (trec_eval's ndcg_cut, ranx's "ndcg") with the ideal order drawn from all
qrels of the query, so relevant passages the first stage missed count against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def precision_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    return sum(qrels.get(doc_id, 0) > 0 for doc_id in ranked[:k]) / k


def reciprocal_rank_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    for rank, doc_id in enumerate(ranked[:k], start=1):
        if qrels.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    ideal = _dcg(sorted((grade for grade in qrels.values() if grade > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return _dcg([max(0, qrels.get(doc_id, 0)) for doc_id in ranked[:k]]) / ideal


def recall(ranked: Sequence[str], qrels: Mapping[str, int]) -> float:
    """Share of the relevant passages present at all: the ceiling any reranker of `ranked` has."""
    relevant = {doc_id for doc_id, grade in qrels.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked)) / len(relevant)


def _dcg(gains: Sequence[int]) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))
