"""The last resort when no provider answers: Okapi BM25 of the query against the request's own passages.

There is no index to draw term statistics from, so the passages are the corpus: a word that
appears in every passage tells them apart by nothing and weighs nearly nothing.

A BM25 score has no fixed upper bound, so it is divided by the one this query has here: a
term's contribution saturates at (k1 + 1) * its IDF however often it repeats. The result is in
[0, 1), in BM25's order, and 0 when a passage shares no word with the query. Expect it well
below a neural reranker's score for the same passage (every query word once, in a passage of
average length, gives 1 / (k1 + 1), about 0.45), so these scores must never go into the cache
of provider scores or be ranked against them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from gateway.resilience.tokens import forms, tokenize, words

K1 = 1.2  # how fast repeating a term stops adding to the score
B = 0.75  # how much a long passage is penalised for being long


def lexical_scores(query: str, passages: Sequence[str], k1: float = K1, b: float = B) -> list[float]:
    """A relevance in [0, 1) for each passage, in passage order; deterministic, never NaN."""
    query_terms = set(tokenize(query))
    if not passages:
        return []
    if not query_terms:
        return [0.0] * len(passages)

    # Only the query's terms are ever scored, so a passage's words are looked up, not stemmed.
    term_of_word = {word: term for term in query_terms for word in forms(term)}
    lengths: list[int] = []
    term_counts: list[Counter[str]] = []
    for passage in passages:
        passage_words = words(passage)
        lengths.append(len(passage_words))
        term_counts.append(Counter(term_of_word[word] for word in passage_words if word in term_of_word))
    average_length = sum(lengths) / len(lengths)
    if average_length == 0:
        return [0.0] * len(passages)

    idf = _idf(query_terms, term_counts)
    ceiling = (k1 + 1) * sum(idf.values())
    scores = []
    for length, counts in zip(lengths, term_counts):
        length_norm = k1 * (1 - b + b * length / average_length)
        score = sum(idf[term] * count * (k1 + 1) / (count + length_norm) for term, count in counts.items())
        scores.append(min(1.0, score / ceiling))
    return scores


def _idf(query_terms: set[str], term_counts: Sequence[Counter[str]]) -> dict[str, float]:
    # Lucene's IDF: ln(1 + (N - df + 0.5) / (df + 0.5)) stays positive even for a term in
    # every passage, where Robertson's original goes negative and would punish a match.
    # Sorted, because set order changes with the hash seed and float sums with their order.
    total = len(term_counts)
    document_frequency = Counter(term for counts in term_counts for term in counts)
    return {
        term: math.log(1 + (total - document_frequency[term] + 0.5) / (document_frequency[term] + 0.5))
        for term in sorted(query_terms)
    }
