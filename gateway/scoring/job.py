"""One rerank request as the scoring stages see it: its distinct pairs (slots) and what it asks (Job)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

from gateway.cache import CachePolicy, PairKey
from gateway.models import Batch, Limit
from gateway.records import record

T = TypeVar("T")


def every_slot(slots: Sequence[int], count: int) -> bool:
    """Whether `slots` is every one of `count` slots, in order. Only a `range` says so: the service
    passes range(count) when every slot is wanted (nothing was cached, a whole rescoring), and a
    list is never taken for it, whatever its length."""
    return slots == range(count)


def at_slots(values: list[T], slots: Sequence[int]) -> list[T]:
    """`values` at these slots: the list itself, not a copy, when they are every slot."""
    if every_slot(slots, len(values)):
        return values
    return [values[slot] for slot in slots]


@record
class Job:
    """What one request asks of the scoring, fixed once the service has planned it: every stage
    below the service reads it, none writes it (each returns what it found instead)."""

    model: str
    group: str  # the cache group the request's scores are read from
    pairs: UniquePairs
    policy: CachePolicy
    keys: list[PairKey]  # per slot
    deadline: float | None  # event-loop time; None: none
    language: str | None = None  # the canary language whose plan it follows; None: the model's plan
    budgets: tuple[Limit, ...] = ()  # the client's and its team's, reserved with each provider's


class UniquePairs:
    """The distinct (query, document) pairs of a request: a repeated passage is scored once.

    Passages are told apart by their digests (`digests`, passage_digests of `documents`), which
    the cache keys need anyway: hashing 20 fresh passages' text for a set cost more than the
    rest of finding the distinct pairs. Two passages with one digest would share a cached score
    in any case.
    """

    def __init__(
        self, queries: Sequence[str], documents: Sequence[str], instruction: str | None, digests: list[bytes],
        listwise: bool = False,
    ) -> None:
        self.queries: Sequence[str] = queries
        self.documents: Sequence[str] = documents
        self.digests = digests  # per slot
        self._one_slot_each = len(set(queries)) == 1 and len(set(digests)) == len(digests)
        if self._one_slot_each:
            # One query, no passage twice (the knowledge-base call): every pair is its own slot.
            self.slots = list(range(len(documents)))
        else:
            slot_of: dict[tuple[str, bytes], int] = {}
            firsts: list[int] = []  # each slot's first position
            self.slots = []
            for position, pair in enumerate(zip(queries, digests)):
                slot = slot_of.setdefault(pair, len(firsts))
                if slot == len(firsts):
                    firsts.append(position)
                self.slots.append(slot)
            if len(firsts) < len(documents):
                self.queries = [queries[p] for p in firsts]
                self.documents = [documents[p] for p in firsts]
                self.digests = [digests[p] for p in firsts]
        self.all = Batch(self.queries, self.documents, instruction, listwise=listwise)

    def select(self, slots: Sequence[int]) -> Batch:
        """The pairs of these slots, named by them (Batch.slots); `all` is every slot, numbered as they are."""
        if every_slot(slots, len(self.documents)):
            return self.all  # the usual miss, without copying
        return Batch([self.queries[s] for s in slots], [self.documents[s] for s in slots], self.all.instruction, slots,
                     self.all.listwise)

    def spread(self, slot_scores: Sequence[float | None]) -> list[float]:
        """Scores back at every request position, repeats included."""
        scores = list(slot_scores) if self._one_slot_each else [slot_scores[slot] for slot in self.slots]
        if None in scores:
            raise AssertionError("a request position has no score")
        return cast(list[float], scores)  # checked just above
