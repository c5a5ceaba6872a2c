"""BM25 over a whole corpus: the first stage `rerank-gateway eval` reranks, and its baseline.

Unlike the last resort (gateway/resilience/lexical.py), which only sees one request's
passages, this has the corpus, so IDF is a corpus figure and is computed once. The same
tokenizer and the same Lucene IDF keep the two comparable.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Mapping

from gateway.resilience.lexical import K1, B
from gateway.resilience.tokens import tokenize


class Bm25Index:
    def __init__(self, documents: Mapping[str, str], k1: float = K1, b: float = B) -> None:
        self._ids = list(documents)
        self._k1, self._b = k1, b
        self._postings: dict[str, list[tuple[int, int]]] = {}  # term -> (document, term frequency)
        self._lengths: list[int] = []
        for position, text in enumerate(documents.values()):
            terms = tokenize(text)
            self._lengths.append(len(terms))
            for term, count in Counter(terms).items():
                self._postings.setdefault(term, []).append((position, count))
        self._average_length = sum(self._lengths) / max(1, len(self._lengths))

    def idf(self, term: str) -> float:
        # Lucene's form stays positive for a term in every document (Robertson's goes negative).
        frequency = len(self._postings.get(term, ()))
        return math.log(1 + (len(self._ids) - frequency + 0.5) / (frequency + 0.5))

    def search(self, query: str, limit: int) -> list[str]:
        """Ids of up to `limit` documents sharing a term with `query`, best first; ties keep corpus order."""
        scores: dict[int, float] = {}
        for term in sorted(set(tokenize(query))):  # sorted: float sums depend on their order
            weight = self.idf(term) * (self._k1 + 1)
            for position, count in self._postings.get(term, ()):
                norm = self._k1 * (1 - self._b + self._b * self._lengths[position] / self._average_length)
                scores[position] = scores.get(position, 0.0) + weight * count / (count + norm)
        best = heapq.nsmallest(limit, scores, key=lambda position: (-scores[position], position))
        return [self._ids[position] for position in best]
