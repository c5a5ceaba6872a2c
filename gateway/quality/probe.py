"""A canary run through any scoring function: the router passes one that respects budgets and
breakers, `rerank-gateway eval` and tests pass a provider client's `score` directly.

Lines that share an instruction go in one scoring call (a provider client splits it further
as its kind needs), so a probe of the built-in set is one call to a many-query provider.
Failures of the scoring function propagate: a probe that could not run has no verdict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.models import Batch, Usage
from gateway.quality.canary import CanaryLine
from gateway.quality.judge import STRICT, Verdict, judge
from gateway.quality.tracker import AgreementTracker

# pairs -> (scores in input order, usage): ProviderClient.score's shape
ScoreFn = Callable[[Batch], Awaitable[tuple[list[float], Usage]]]


@dataclass(frozen=True, slots=True)
class CanaryOutcome:
    lines: tuple[CanaryLine, ...]
    scores: tuple[tuple[float, ...], ...]  # per line, in CanaryLine.documents order
    verdict: Verdict
    usage: Usage

    def rejudged(self, pass_share: float) -> CanaryOutcome:
        """The same scores held to another threshold: a changed `canary_pass_share` needs no new calls."""
        return CanaryOutcome(self.lines, self.scores, judge(self.lines, self.scores, pass_share), self.usage)

    def feed(self, tracker: AgreementTracker, reference: CanaryOutcome) -> None:
        """Add this provider's canary scores against the reference's, one sample per line."""
        if reference.lines != self.lines:
            raise ValueError("canary outcomes of different canary sets cannot be compared")
        for line, ours, theirs in zip(self.lines, self.scores, reference.scores):
            tracker.add(theirs, ours, line.language)


async def run_canary(lines: Sequence[CanaryLine], score: ScoreFn, pass_share: float = STRICT) -> CanaryOutcome:
    lines = tuple(lines)
    per_line: list[tuple[float, ...]] = [()] * len(lines)
    usage = Usage()
    for instruction, members in _by_instruction(lines).items():
        queries = [lines[i].query for i in members for _ in lines[i].documents]
        documents = [doc for i in members for doc in lines[i].documents]
        scores, call_usage = await score(Batch(queries, documents, instruction))
        usage.add(call_usage)
        start = 0
        for i in members:
            end = start + len(lines[i].documents)
            per_line[i] = tuple(scores[start:end])
            start = end
    return CanaryOutcome(lines, tuple(per_line), judge(lines, per_line, pass_share), usage)


def _by_instruction(lines: Sequence[CanaryLine]) -> dict[str | None, list[int]]:
    groups: dict[str | None, list[int]] = {}
    for index, line in enumerate(lines):
        groups.setdefault(line.instruction, []).append(index)
    return groups
