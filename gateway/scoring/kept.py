"""What one walk of the router's plan got back from its provider calls, kept because it was paid for.

A step whose pairs were split into several upstream calls (max_batch, one-query kinds) may fail
after some of its calls answered. Those answers are kept twice over:

    cached    every step's answered calls go into the caller's list as they arrive, and the
              caller caches them (in the step's cache group) whatever the walk returns or raises;
              a step that gives the answer is taken out again, since its answer is cached anyway
    carried   the next step that scores the same pairs, with the same model, in the same group
              (so its scores may stand beside them) is sent only the pairs no call answered, and
              its answer is merged with the carried scores; any other step scores what the plan's
              rules give it (the whole request, for another model or group)

No state outlives the walk: one KeptAnswers per Router.score call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.models import Batch, KeptScores, ScoreRequest, Usage
from gateway.providers.client import ProviderClient
from gateway.quality.calibration import Calibration


class PlanStep(Protocol):
    """What the router's Step offers here: whose scores, which group, which of the request's pairs."""

    @property
    def model(self) -> str: ...

    @property
    def client(self) -> ProviderClient: ...

    @property
    def group(self) -> str: ...

    @property
    def whole(self) -> bool: ...

    @property
    def panic(self) -> bool: ...

    @property
    def scale(self) -> Calibration | None: ...


def pairs_of(request: ScoreRequest, step: PlanStep) -> Batch:
    return request.whole if step.whole else request.missing


@dataclass(frozen=True, slots=True)
class _Carried:
    """Scores failed steps' answered calls gave for the pairs of one (model, group, whole), by slot, and what is left."""

    model: str
    group: str
    whole: bool
    batch: Batch  # the step's pairs, carried and left together
    scores: dict[int, float]  # slot -> score
    usage: Usage
    entries: tuple[KeptScores, ...]  # where the scores came from: folded into a merged answer
    rest: Batch  # the pairs no call answered

    def serves(self, step: PlanStep) -> bool:
        return (step.model, step.group, step.whole) == (self.model, self.group, self.whole)

    def merged(self, scores: list[float], usage: Usage) -> tuple[list[float], Usage]:
        """The carried scores with an answer for the rest: every pair of the batch, in its order, and both costs."""
        found = dict(self.scores)
        found.update(zip(self.rest.numbers, scores))
        total = Usage()
        total.add(self.usage)
        total.add(usage)
        return [found[slot] for slot in self.batch.numbers], total


class KeptAnswers:
    def __init__(self, sink: list[KeptScores]) -> None:
        self._sink = sink
        self._carried: _Carried | None = None
        # Each call under way: its entry in the sink, and the carried scores its pairs were cut from.
        self._open: dict[PlanStep, tuple[KeptScores, _Carried | None]] = {}

    def pairs_for(self, request: ScoreRequest, step: PlanStep) -> Batch:
        """What this step would be sent now: only the pairs still unscored, where carried scores serve it."""
        carried = self._carried
        if carried is not None and carried.serves(step):
            return carried.rest
        return pairs_of(request, step)

    def interchangeable(self, request: ScoreRequest, first: PlanStep, other: PlanStep) -> bool:
        """A hedge must score the same pairs with the same model, or its answer could not stand in.

        A provider of another cache group scores the whole request; that is the same pairs when
        nothing was cached (the answer says which group its scores belong to).
        """
        same_pairs = self.pairs_for(request, other) is self.pairs_for(request, first)
        return other.model == first.model and not other.panic and same_pairs

    def open(self, request: ScoreRequest, step: PlanStep) -> KeptScores:
        """The entry a call of this step fills as its upstream calls answer; in the sink from the start."""
        carried = self._carried if self._carried is not None and self._carried.serves(step) else None
        pairs = carried.rest if carried is not None else pairs_of(request, step)
        entry = KeptScores(step.client.name, step.model, step.group, pairs,
                           scale=None if step.scale is None else step.scale.apply)
        self._sink.append(entry)
        self._open[step] = (entry, carried)
        return entry

    def pairs_sent(self, step: PlanStep) -> Batch:
        return self._open[step][0].pairs

    def failed(self, request: ScoreRequest, step: PlanStep) -> None:
        """A step failed: what its calls answered stays in the sink and is carried to a step that can use it."""
        entry, carried = self._open.pop(step)
        if not entry.calls:
            self._sink.remove(entry)
            return
        batch = pairs_of(request, step)
        scores = dict(carried.scores) if carried is not None else {}
        for call in entry.calls:
            scores.update(zip(call.slots, entry.scores_of(call)))
        usage = entry.usage()
        entries: tuple[KeptScores, ...] = (entry,)
        if carried is not None:
            usage.add(carried.usage)
            entries = (*carried.entries, entry)
        rest = [slot for slot in batch.numbers if slot not in scores]
        if not rest:
            return  # every call answered before the step was cut off: cached, nothing left to send on
        self._carried = _Carried(step.model, step.group, step.whole, batch, scores, usage, entries, batch.only(rest))

    def answered(self, step: PlanStep, scores: list[float], usage: Usage) -> tuple[list[float], Usage]:
        """A step's answer for every pair of its batch: merged with the carried scores its pairs were cut from."""
        entry, carried = self._open.pop(step)
        self._sink.remove(entry)  # the answer is cached with the rest of the request
        if carried is None:
            return scores, usage
        for folded in carried.entries:
            if folded in self._sink:
                self._sink.remove(folded)
        if self._carried is carried:
            self._carried = None
        return carried.merged(scores, usage)
