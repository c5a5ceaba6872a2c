"""How a provider that fails its canary stands: better than chance? better than BM25?

A failed canary does not make a provider useless: one that ranks English right and three Chinese
lines slightly wrong is still far better than a refusal. What the router needs to know is
whether it ranks at all (better than chance) and whether the lexical last resort would do as
well on the same lines; both come from the canary scores the probe already has.

    correct      (relevant, irrelevant) pairs of the canary in the right order (a tie counts half)
    chance_p     how likely so many correct pairs are from scores blind to relevance: a
                 Mann-Whitney U per line, summed over the lines (normal approximation, with
                 continuity correction; a line's pairs share passages, so counting pairs as
                 independent coin flips would call luck skill)
    lexical      correct pairs BM25 (gateway.resilience.lexical) gets on the same lines
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.quality.canary import CanaryLine
from gateway.resilience.lexical import lexical_scores

# A provider must rank better than chance at this level to be served while failing: scores blind
# to relevance pass it once in a thousand probes. The emulator's `random` on the built-in set
# (a lucky draw: 48 of 66 pairs) gives 0.003; its `template` (noisy but real) 4e-5.
CHANCE_LEVEL = 0.001
# The lines of one language are a third of the built-in set: 24 pairs, whose best possible p is
# 1.4e-4, so a real but imperfect ranker there (20 of 24: p = 0.009, the emulator's `template`)
# cannot reach CHANCE_LEVEL. In one language a provider escapes "like noise" with p below
# CHANCE_LEVEL on that language's lines alone (a model pruned to English: en p = 1.4e-4 while
# its pooled p is 0.54), or below this level when it ranks better than chance over the whole set.
# A provider ranking at random passes this level in one language once in twenty probes, but
# its pooled p stays above CHANCE_LEVEL, so it never escapes that way.
LANGUAGE_CHANCE_LEVEL = 0.05


@dataclass(frozen=True, slots=True)
class CanaryStanding:
    correct: float
    pairs: int
    chance_p: float
    lexical_correct: float
    level: float = CHANCE_LEVEL  # below it, better than chance (LANGUAGE_CHANCE_LEVEL for one language's lines)

    @property
    def share(self) -> float:
        return self.correct / self.pairs if self.pairs else 0.0

    @property
    def like_noise(self) -> bool:
        """No better than chance: never served, whatever else can answer."""
        return self.chance_p >= self.level

    @property
    def no_better_than_lexical(self) -> bool:
        return self.correct <= self.lexical_correct

    def describe(self) -> str:
        return (f"{self.correct:g} of {self.pairs} canary pairs in order (BM25: {self.lexical_correct:g}; "
                f"chance p={self.chance_p:.2g})")


def in_one_language(found: CanaryStanding, pooled: CanaryStanding) -> CanaryStanding:
    """The standing on one language's lines, judged at the level its fewer pairs allow (see
    LANGUAGE_CHANCE_LEVEL): the lenient one only for a provider that ranks over the whole set."""
    level = LANGUAGE_CHANCE_LEVEL if pooled.chance_p < CHANCE_LEVEL else CHANCE_LEVEL
    return dataclasses.replace(found, level=level)


def standing(lines: Sequence[CanaryLine], scores: Sequence[Sequence[float]]) -> CanaryStanding:
    """`scores[i]` are line i's scores in CanaryLine.documents order, as judge takes them."""
    correct = 0.0
    mean = variance = 0.0
    lexical = 0.0
    for line, line_scores in zip(lines, scores, strict=True):
        relevant, irrelevant = len(line.relevant), len(line.documents) - len(line.relevant)
        correct += _correct_pairs(line_scores, relevant)
        lexical += _correct_pairs(lexical_scores(line.query, line.documents), relevant)
        mean += relevant * irrelevant / 2
        variance += relevant * irrelevant * (relevant + irrelevant + 1) / 12
    pairs = int(2 * mean)
    return CanaryStanding(correct, pairs, _upper_tail(correct, mean, variance), lexical)


def _correct_pairs(scores: Sequence[float], relevant: int) -> float:
    return sum(1.0 if r > i else 0.5 if r == i else 0.0 for r in scores[:relevant] for i in scores[relevant:])


def _upper_tail(observed: float, mean: float, variance: float) -> float:
    """P(U >= observed) for a sum of Mann-Whitney Us under the null, by the normal approximation."""
    if variance <= 0:
        return 1.0
    z = (observed - 0.5 - mean) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))
