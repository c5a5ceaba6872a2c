"""Does a provider pass a canary? Graded: the share of (relevant, irrelevant) pairs it orders
right, in each language of the set, against a threshold (`canary_pass_share` in the config).

    pair      one relevant and one irrelevant passage of a line; ordered when the relevant one
              scores strictly higher (a tie tells nothing, so it counts as wrong)
    margin    of a line: min(relevant) - max(irrelevant); positive means every pair of the line
              is ordered, with that much room; the most negative line says best how wrong it is
    rule      the share of ordered pairs reaches the threshold in every language: a model that
              ranks English well and Russian badly fails, however many English lines it wins

With a threshold of 1.0 (the default of `judge`) this is the strict rule "every relevant passage
above every irrelevant one on every line"; the config's default leaves room for a line or two of
a good model lost by a hair, which must not cost a provider its traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.quality.canary import CanaryLine

STRICT = 1.0


@dataclass(frozen=True, slots=True)
class LineVerdict:
    line: CanaryLine
    margin: float  # min relevant score - max irrelevant score
    ordered: int = 0  # (relevant, irrelevant) pairs with the relevant one strictly above
    pairs: int = 0

    @property
    def passed(self) -> bool:
        return self.margin > 0

    def describe(self) -> str:
        return f"{self.line.where()} ({self.line.query!r}): margin {self.margin:+.3f}"


@dataclass(frozen=True, slots=True)
class LanguageVerdict:
    """The lines of one language, together."""

    language: str
    lines: int
    ordered: int
    pairs: int
    worst_margin: float

    @property
    def share(self) -> float:
        return self.ordered / self.pairs if self.pairs else 0.0

    def passes(self, pass_share: float) -> bool:
        return self.share >= pass_share

    def as_json(self, pass_share: float) -> dict[str, object]:
        return {"passed": self.passes(pass_share), "lines": self.lines, "ordered_pairs": self.ordered,
                "pairs": self.pairs, "share": round(self.share, 4), "worst_margin": round(self.worst_margin, 4)}


@dataclass(frozen=True, slots=True)
class Verdict:
    lines: tuple[LineVerdict, ...]
    pass_share: float = STRICT  # least share of ordered pairs, in every language, for a pass

    @property
    def languages(self) -> tuple[LanguageVerdict, ...]:
        """Per language, in the order the set first uses them."""
        grouped: dict[str, list[LineVerdict]] = {}
        for verdict in self.lines:
            grouped.setdefault(verdict.line.language, []).append(verdict)
        return tuple(
            LanguageVerdict(language, len(members), sum(m.ordered for m in members), sum(m.pairs for m in members),
                            min(m.margin for m in members))
            for language, members in grouped.items()
        )

    @property
    def passed(self) -> bool:
        return all(language.passes(self.pass_share) for language in self.languages)

    @property
    def ordered(self) -> int:
        return sum(line.ordered for line in self.lines)

    @property
    def pairs(self) -> int:
        return sum(line.pairs for line in self.lines)

    @property
    def share(self) -> float:
        """Ordered pairs over all languages: 1.0 for a perfect ranker, about 0.5 for noise."""
        return self.ordered / self.pairs if self.pairs else 0.0

    @property
    def failures(self) -> tuple[LineVerdict, ...]:
        """Lines with at least one pair out of order."""
        return tuple(line for line in self.lines if not line.passed)

    @property
    def worst(self) -> LineVerdict:
        return min(self.lines, key=lambda line: line.margin)

    def rule(self) -> str:
        return f"at least {self.pass_share:.0%} of (relevant, irrelevant) pairs ordered in every language"

    def reason(self) -> str:
        """One line for logs and status: why it failed, or how narrowly it passed."""
        per_language = ", ".join(f"{lang.language} {lang.ordered}/{lang.pairs}" for lang in self.languages)
        counts = f"{self.ordered} of {self.pairs} canary pairs ordered ({per_language}; rule: {self.rule()})"
        if self.passed:
            return f"passed {len(self.lines)} canary lines: {counts}; narrowest {self.worst.describe()}"
        failing = ", ".join(lang.language for lang in self.languages if not lang.passes(self.pass_share))
        return (f"failed in {failing}: {counts}; {len(self.failures)} of {len(self.lines)} lines with a pair "
                f"out of order, worst {self.worst.describe()}")

    def as_json(self) -> dict[str, object]:
        """The graded figures as /readyz shows them."""
        return {
            "passed": self.passed, "rule": self.rule(), "pass_share": self.pass_share,
            "ordered_pairs": self.ordered, "pairs": self.pairs, "share": round(self.share, 4),
            "worst_margin": round(self.worst.margin, 4), "worst_line": self.worst.describe(),
            "languages": {lang.language: lang.as_json(self.pass_share) for lang in self.languages},
        }


def judge(lines: Sequence[CanaryLine], scores: Sequence[Sequence[float]], pass_share: float = STRICT) -> Verdict:
    """`scores[i]` are line i's scores in `CanaryLine.documents` order."""
    if len(lines) != len(scores):
        raise ValueError(f"{len(scores)} score lists for {len(lines)} canary lines")
    if not 0 < pass_share <= 1:
        raise ValueError(f"pass_share must be in (0, 1], got {pass_share}")
    return Verdict(tuple(_judge_line(line, line_scores) for line, line_scores in zip(lines, scores)), pass_share)


def _judge_line(line: CanaryLine, scores: Sequence[float]) -> LineVerdict:
    if len(scores) != len(line.documents):
        raise ValueError(f"{line.where()}: {len(scores)} scores for {len(line.documents)} passages")
    split = len(line.relevant)
    relevant, irrelevant = scores[:split], scores[split:]
    ordered = sum(r > i for r in relevant for i in irrelevant)
    return LineVerdict(line, min(relevant) - max(irrelevant), ordered, len(relevant) * len(irrelevant))
