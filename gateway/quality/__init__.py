"""The quality guard: is a provider serving the model it claims, and do two agree?

    guard.py      QualityGuard: probes, shadow calls, and which providers may share cached scores
    board.py      QualityBoard: verdicts and agreement per provider, kept across reloads

    canary.py     CanaryLine, load_canary, builtin_canary: queries with known answers
    judge.py      judge: the share of (relevant, irrelevant) pairs ordered, per language, graded
    agreement.py  agreement, kendall_tau_b, mean_absolute_difference: two score lists compared
    tracker.py    AgreementTracker: rolling agreement with the reference, in bounded memory
    probe.py      run_canary: a canary through any scoring function, judged

Only guard.py calls providers (through resilience's GuardedCall); in the other modules scoring
is a function the caller passes, so tests drive them directly.

May import: resilience, providers, budget, observability, config, models, errors. Not scoring,
which asks this package while it plans.
"""

from gateway.quality.agreement import Agreement, agreement, kendall_tau_b, mean_absolute_difference
from gateway.quality.canary import CanaryError, CanaryLine, builtin_canary, load_canary, parse_canary
from gateway.quality.judge import LineVerdict, Verdict, judge
from gateway.quality.probe import CanaryOutcome, ScoreFn, run_canary
from gateway.quality.tracker import AgreementTracker

__all__ = [
    "Agreement",
    "AgreementTracker",
    "CanaryError",
    "CanaryLine",
    "CanaryOutcome",
    "LineVerdict",
    "ScoreFn",
    "Verdict",
    "agreement",
    "builtin_canary",
    "judge",
    "kendall_tau_b",
    "load_canary",
    "mean_absolute_difference",
    "parse_canary",
    "run_canary",
]
