"""The request bodies the benchmarks send: the knowledge-base server's rerank call, made up.

Two shapes: `FreshBodies`, where a counter makes every pair new (the cache-miss path), and
`KbReplay`, a seeded stream in which queries come back with partly changed candidates (what a
knowledge base's traffic looks like to a score cache). Pure: no I/O, same seed, same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson

DOCUMENTS_PER_REQUEST = 20
QUERY_WORDS = 12
DOCUMENT_CHARS = 400

_VOCABULARY = (
    "retrieval ranking passage query vector index search latency model token context answer "
    "document relevance score embedding cluster shard replica cache gateway provider budget "
    "fallback timeout batch server client request response network storage memory compute "
    "policy contract invoice customer account billing refund shipping warehouse order product "
    "river mountain forest ocean city village harbor bridge station market garden library"
).split()


def text(rng: random.Random, min_chars: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < min_chars:
        words.append(rng.choice(_VOCABULARY))
    return " ".join(words)


def query_text(rng: random.Random) -> str:
    return " ".join(rng.choice(_VOCABULARY) for _ in range(QUERY_WORDS - 1))


def rerank_body(query: str, documents: list[str], broadcast: bool) -> bytes:
    """DeepInfra's body; `broadcast` repeats the query once per document."""
    queries = [query] * len(documents) if broadcast else [query]
    return orjson.dumps({"queries": queries, "documents": documents})


@dataclass
class FreshBodies:
    """Request bodies whose pairs are all new: a counter in the query and every document.

    Body n depends only on n and the label, so the same n gives the same pairs in either
    form (one query, or the query once per document); different labels never share a pair.
    """

    broadcast_query: bool  # the default form of `body()`
    label: str = ""
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    next_id: int = 0
    # A pool of base texts keeps generation cheap; the counter alone makes every pair new.
    _queries: list[str] = field(init=False)
    _documents: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self._queries = [query_text(self.rng) for _ in range(64)]
        self._documents = [text(self.rng, DOCUMENT_CHARS - 12) for _ in range(256)]

    def body_at(self, n: int, broadcast: bool) -> bytes:
        query = f"q{self.label}{n} {self._queries[n % len(self._queries)]}"
        documents = [f"d{self.label}{n}.{j} {self._documents[(n * 7 + j) % len(self._documents)]}"
                     for j in range(DOCUMENTS_PER_REQUEST)]
        return rerank_body(query, documents, broadcast)

    def body(self, broadcast: bool | None = None) -> bytes:
        self.next_id += 1
        return self.body_at(self.next_id, self.broadcast_query if broadcast is None else broadcast)

    def bodies(self, count: int, broadcast: bool | None = None) -> list[bytes]:
        return [self.body(broadcast) for _ in range(count)]


@dataclass(frozen=True)
class KbReplay:
    """A knowledge base's rerank traffic, replayable from its seed.

    Queries are drawn with Zipf-like repeats (weight 1/rank^zipf_s over `distinct_queries`).
    A query's first request gets candidates drawn from the index; each repeat keeps a random
    50-90% of that query's previous candidates and fills the rest with newly indexed passages
    (the index grows), in a new order, since the retriever's ranking moves too. So no repeat
    is byte-identical to an earlier request, while most of its pairs were scored before.
    """

    requests: int = 2000
    distinct_queries: int = 500
    zipf_s: float = 1.0
    candidates: int = 40
    overlap: tuple[float, float] = (0.5, 0.9)
    initial_index: int = 20_000
    seed: int = 2024

    def bodies(self) -> list[bytes]:
        rng = random.Random(self.seed)
        texts = _Passages(rng)
        weights = [1.0 / rank**self.zipf_s for rank in range(1, self.distinct_queries + 1)]
        queries = [f"query {k}: {query_text(rng)}" for k in range(self.distinct_queries)]
        last: dict[int, list[int]] = {}  # query -> its previous candidates (passage ids)
        next_passage = self.initial_index
        bodies = []
        for k in rng.choices(range(self.distinct_queries), weights, k=self.requests):
            if k in last:
                kept = rng.sample(last[k], round(self.candidates * rng.uniform(*self.overlap)))
                fresh = range(next_passage, next_passage + self.candidates - len(kept))
                next_passage = fresh.stop
                ids = kept + list(fresh)
                rng.shuffle(ids)
            else:
                ids = rng.sample(range(self.initial_index), self.candidates)
            last[k] = ids
            bodies.append(rerank_body(queries[k], [texts.passage(i) for i in ids], broadcast=False))
        return bodies


class _Passages:
    """Passage i of the index: an id in front of one of a pool of ~400-character texts."""

    _POOL = 1024

    def __init__(self, rng: random.Random) -> None:
        self._texts = [text(rng, DOCUMENT_CHARS - 16) for _ in range(self._POOL)]

    def passage(self, i: int) -> str:
        return f"passage {i}: {self._texts[(i * 7919) % self._POOL]}"
