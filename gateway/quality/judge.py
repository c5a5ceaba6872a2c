"""Does a provider pass a canary? On every line, every relevant passage above every irrelevant one.

The margin of a line is min(relevant) - max(irrelevant): positive means the line passes with
that much room, and the most negative line says best how wrong a provider is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.quality.canary import CanaryLine


@dataclass(frozen=True, slots=True)
class LineVerdict:
    line: CanaryLine
    margin: float  # min relevant score - max irrelevant score

    @property
    def passed(self) -> bool:
        return self.margin > 0

    def describe(self) -> str:
        return f"{self.line.where()} ({self.line.query!r}): margin {self.margin:+.3f}"


@dataclass(frozen=True, slots=True)
class Verdict:
    lines: tuple[LineVerdict, ...]

    @property
    def passed(self) -> bool:
        return all(line.passed for line in self.lines)

    @property
    def failures(self) -> tuple[LineVerdict, ...]:
        return tuple(line for line in self.lines if not line.passed)

    @property
    def worst(self) -> LineVerdict:
        return min(self.lines, key=lambda line: line.margin)

    def reason(self) -> str:
        """One line for logs and status: why it failed, or how narrowly it passed."""
        if self.passed:
            return f"passed {len(self.lines)} canary lines; narrowest {self.worst.describe()}"
        failures = self.failures
        return (f"failed {len(failures)} of {len(self.lines)} canary lines "
                f"(an irrelevant passage scored at or above a relevant one); "
                f"worst {self.worst.describe()}")


def judge(lines: Sequence[CanaryLine], scores: Sequence[Sequence[float]]) -> Verdict:
    """`scores[i]` are line i's scores in `CanaryLine.documents` order."""
    if len(lines) != len(scores):
        raise ValueError(f"{len(scores)} score lists for {len(lines)} canary lines")
    return Verdict(tuple(_judge_line(line, line_scores) for line, line_scores in zip(lines, scores)))


def _judge_line(line: CanaryLine, scores: Sequence[float]) -> LineVerdict:
    if len(scores) != len(line.documents):
        raise ValueError(f"{line.where()}: {len(scores)} scores for {len(line.documents)} passages")
    split = len(line.relevant)
    return LineVerdict(line, min(scores[:split]) - max(scores[split:]))
