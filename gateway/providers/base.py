"""What every provider adapter is: pure conversions to and from one provider's wire format.

Adapters do no I/O; `gateway.providers.client` does the HTTP, batching and validation around
them, so each adapter is tested against the golden wire samples alone.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from gateway.config import ProviderConfig
from gateway.models import Batch
from gateway.records import record

__all__ = [
    "Batch", "InvalidAnswer", "ProviderAdapter", "WireScores", "as_score", "as_scores", "dig", "first_count", "pair_chars",
    "scores_by_index",
]


class InvalidAnswer(ValueError):
    """The provider answered 200 with something that is not a full, valid set of scores."""


@record
class WireScores:
    """Scores in batch order, with the usage the provider reported (None where it did not)."""

    scores: list[float]
    tokens: int | None = None
    cost_usd: float | None = None


class ProviderAdapter(Protocol):
    multi_query: bool  # scores arbitrary (query, document) pairs in one call
    takes_instruction: bool

    def default_path(self, config: ProviderConfig) -> str: ...

    def to_wire(self, batch: Batch, config: ProviderConfig) -> dict[str, Any]: ...

    def from_wire(self, payload: Any, count: int) -> WireScores: ...

    def billed_chars(self, batch: Batch) -> int:
        """The characters a call of `batch` is billed for: what a token estimate of an answer
        without usage (and the budget hold before any call) counts."""
        ...


def pair_chars(batch: Batch) -> int:
    """A cross-encoder reads each pair whole: its query, its document and the instruction, per pair."""
    per_pair_instruction = len(batch.instruction) if batch.instruction else 0
    return sum(map(len, batch.queries)) + sum(map(len, batch.documents)) + per_pair_instruction * len(batch.documents)


def scores_by_index(items: Any, count: int, score_key: str) -> list[float]:
    """Place `[{"index", score_key}]` results, in whatever order, back in document order."""
    if not isinstance(items, list):
        raise InvalidAnswer("results are not a list")
    if len(items) != count:
        raise InvalidAnswer(f"{len(items)} results for {count} documents")
    scores: list[float | None] = [None] * count
    for item in items:
        if not isinstance(item, dict):
            raise InvalidAnswer("a result is not an object")
        index = item.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            raise InvalidAnswer(f"result index {index!r} is out of range for {count} documents")
        if scores[index] is not None:
            raise InvalidAnswer(f"result index {index} appears twice")
        scores[index] = as_score(item.get(score_key))
    return scores  # type: ignore[return-value]  # every slot was filled: count items, no repeats


_PLAIN_NUMBERS = frozenset({float, int})  # bool is a type of its own: True is no score


def as_scores(values: list[Any]) -> list[float]:
    """as_score of each value; an answer of plain finite numbers (the usual one) is checked in C."""
    kinds = set(map(type, values))
    if kinds <= _PLAIN_NUMBERS and math.isfinite(sum(values)):  # an inf or nan makes the sum one
        return list(map(float, values)) if int in kinds else values
    return [as_score(value) for value in values]


def as_score(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidAnswer(f"score {value!r} is not a number")
    score = float(value)
    if not math.isfinite(score):
        raise InvalidAnswer(f"score {value!r} is not finite")
    return score


def dig(payload: Any, *path: str) -> Any:
    """payload[path[0]][path[1]]..., or None where any step is missing or not an object."""
    for key in path:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload


def first_count(payload: Any, *paths: tuple[str, ...]) -> int | None:
    """The first non-negative integer found at any of the paths: providers report usage differently."""
    for path in paths:
        value = dig(payload, *path)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
