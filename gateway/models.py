"""The normalized types every dialect decodes into and encodes from."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from gateway.records import record


@record
class RerankRequest:
    """What a client asked for, whatever wire format it spoke.

    Pair i is (queries[i], documents[i]): one-query formats repeat the query, which costs a
    pointer per document and lets DeepInfra's many-query batches flow through the same path.
    """

    queries: tuple[str, ...]
    documents: tuple[str, ...]
    model: str | None = None
    instruction: str | None = None
    top_n: int | None = None
    return_documents: bool = False
    raw_scores: bool = False  # TEI clients may ask for logits instead of probabilities
    # Cohere's object documents as the client sent them: returned whole with return_documents,
    # since Cohere keeps every field. None when every document was a plain string.
    sent_documents: tuple[Any, ...] | None = None
    # What the client said of long documents (gateway.scoring.shaping): Cohere v2's
    # max_tokens_per_doc, TEI's truncate (True: "truncate", False: "refuse") and its
    # truncation_direction ("left" keeps a document's end). None: the model's settings.
    max_tokens_per_document: int | None = None
    long_documents: Literal["truncate", "refuse"] | None = None
    truncate_from: Literal["left", "right"] = "right"


class Limit(NamedTuple):
    """A ledger scope's budget (gateway.budget); None leaves that window unlimited but still tracked.

    Here, not in gateway.budget, because a request carries its client's and team's limits down to
    the guarded call (ScoreRequest.budgets).
    """

    scope: str
    daily_usd: float | None = None
    monthly_usd: float | None = None


@record
class Batch:
    """(query, document) pairs and the instruction they share: what one scoring round sends.

    `slots` name the pairs: the request's one numbering of its distinct pairs (gateway.scoring's
    slots), which every layer below the service keeps, whatever subset or split it works on:
    an AnsweredCall says which slots it answered, a retry or the next step sends the slots no
    call answered. Only a provider's wire goes by position in its own call. None: the pairs are
    numbered 0..n-1 (a batch of its own, such as a canary line or an eval query).

    For one-query provider kinds every query of one upstream call is the same.
    """

    queries: Sequence[str]
    documents: Sequence[str]
    instruction: str | None
    slots: Sequence[int] | None = None
    # A list-wise model's request (models.*.listwise): one call, whatever the provider's max_batch.
    listwise: bool = False

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def numbers(self) -> Sequence[int]:
        """The slot of each pair, in order."""
        return range(len(self.documents)) if self.slots is None else self.slots

    def positions(self) -> dict[int, int]:
        """Each slot's position in this batch (where its text and score are)."""
        return {slot: position for position, slot in enumerate(self.numbers)}

    def select(self, positions: Sequence[int]) -> Batch:
        """The pairs at these positions, in their order, keeping their slots."""
        numbers = self.numbers
        return Batch([self.queries[p] for p in positions], [self.documents[p] for p in positions], self.instruction,
                     [numbers[p] for p in positions], self.listwise)

    def only(self, slots: Sequence[int]) -> Batch:
        """The pairs of these slots, in their order."""
        where = self.positions()
        return self.select([where[slot] for slot in slots])

    def positions_by_query(self) -> dict[str, list[int]]:
        """Each distinct query with the positions of its pairs, in first-seen order."""
        positions: dict[str, list[int]] = {}
        for position, query in enumerate(self.queries):
            positions.setdefault(query, []).append(position)
        return positions


@record
class ScoreRequest:
    """What the service asks the router for: scores of `missing` by `model`, before `deadline`.

    `whole` holds every distinct pair of the client's request: a step whose scores must not be
    ranked beside the cached ones (another model, a provider that does not agree with the one
    whose scores `group` holds, the lexical last resort) scores all of it. `group` is the cache
    namespace the request's cached scores came from. `deadline` is in event-loop time; None: none.
    """

    model: str
    missing: Batch
    whole: Batch
    group: str
    deadline: float | None = None
    language: str | None = None  # the canary language whose plan it follows (PlanTable.language_of)
    # The client's and its team's budgets, reserved with each provider's (gateway.clients).
    budgets: tuple[Limit, ...] = ()


@dataclass(slots=True)
class Usage:
    """What upstream calls cost: the provider's own cost figure where it reports one, else priced."""

    tokens: int = 0
    cost_usd: float = 0.0
    # The part of tokens and cost_usd the gateway estimated, because the answer reported no usage.
    estimated_tokens: int = 0
    estimated_cost_usd: float = 0.0

    def add(self, other: Usage) -> None:
        self.tokens += other.tokens
        self.cost_usd += other.cost_usd
        self.estimated_tokens += other.estimated_tokens
        self.estimated_cost_usd += other.estimated_cost_usd


@dataclass(slots=True)
class AnsweredCall:
    """One upstream call that answered: the scores of these slots (Batch.slots), in their order."""

    slots: Sequence[int]
    scores: list[float]
    usage: Usage


@dataclass(slots=True, eq=False)  # each one is its own: compared and found by identity
class KeptScores:
    """A plan step's answered calls, kept whatever became of the step: they were paid for.

    `calls` grows while the step runs (each names the slots it answered), so a step that failed part-way,
    lost a hedge or was cut by the deadline still leaves its answers to be cached and counted.
    """

    provider: str
    model: str
    group: str  # the cache namespace the scores belong to
    pairs: Batch
    calls: list[AnsweredCall] = field(default_factory=list)
    # A provider calibrated onto its group's scale: maps its raw scores; None, taken as they are.
    scale: Callable[[Sequence[float]], list[float]] | None = None

    def usage(self) -> Usage:
        return total_usage(self.calls)

    def scores_of(self, call: AnsweredCall) -> list[float]:
        """A call's scores on the group's scale, as they are cached and carried."""
        return call.scores if self.scale is None else self.scale(call.scores)


def total_usage(calls: Sequence[AnsweredCall]) -> Usage:
    total = Usage()
    for call in calls:
        total.add(call.usage)
    return total


def merge_answered(calls: Sequence[AnsweredCall], pairs: Batch) -> tuple[list[float], Usage]:
    """The scores of `pairs`, in their order, put together from calls that answered all of them, and their cost."""
    if len(calls) == 1 and len(calls[0].slots) == len(pairs):
        # One call answered every pair: the batch as it stood, unsplit and in order (the usual miss).
        return calls[0].scores, total_usage(calls)
    scores = [0.0] * len(pairs)
    where = pairs.positions()
    for call in calls:
        for slot, score in zip(call.slots, call.scores):
            scores[where[slot]] = score
    return scores, total_usage(calls)


@dataclass(slots=True)
class ScoredPairs:
    """Scores from one step of the router's plan, in the order of the pairs it scored."""

    scores: list[float]
    usage: Usage
    provider: str
    model: str  # canonical model that produced the scores
    group: str  # the cache namespace these scores belong to
    whole: bool = False  # the scores are of ScoreRequest.whole, not of .missing
    degraded: bool = False  # the lexical last resort, not a model
    # The provider's own scores when `scores` are them mapped onto the group's scale (calibrated).
    raw_scores: list[float] | None = None


@dataclass(slots=True)
class LongDocuments:
    """What shaping did to a request's documents over its model's limit, for the request log."""

    limit_tokens: int  # the tokens per document the request's documents were held to (its shortest query's)
    truncated: int = 0  # documents cut at the limit
    chunked: int = 0  # documents scored as windows
    windows: int = 0  # the windows of the chunked documents: pairs of their own, each cached and billed
    windows_sent: int = 0  # those of them that went upstream (the rest were cached)
    # Per chunked document (request position), the window whose score it took (0: its start).
    best_windows: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class RerankResult:
    """Scores in request order, plus where they came from."""

    scores: list[float]
    model: str
    provider: str  # provider name, or "cache" when nothing went upstream
    usage: Usage = field(default_factory=Usage)
    cache_hits: int = 0
    cache_misses: int = 0
    runtime_ms: float = 0.0
    upstream_ms: float = 0.0  # wall time spent waiting on providers (or on another request's call)
    degraded: bool = False  # scored by the local lexical last resort, not by a model
    language: str | None = None  # the canary language whose plan scored it, where plans differ by language
    # Per request position, the serving provider's own score where `scores` holds it mapped onto
    # the reference's scale (None elsewhere); None when nothing was mapped. For the request log.
    raw_scores: list[float | None] | None = None
    long_documents: LongDocuments | None = None  # None: every document was sent whole

    def ranking(self, top_n: int | None) -> list[int]:
        """Document indices, best first, cut to top_n; ties keep request order."""
        indices = range(len(self.scores))
        key = self.scores.__getitem__
        if top_n is not None and top_n < len(self.scores):
            return heapq.nlargest(top_n, indices, key=key)
        return sorted(indices, key=key, reverse=True)
