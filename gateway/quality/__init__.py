"""The quality guard: is a provider serving the model it claims, and do two agree?

    guard.py      QualityGuard: the router's answers (may a failing provider serve, the plan
                  order); builds the cache groups, starts the prober and shadower
    groups.py     CacheGroups: the cache group of a provider's scores, named by what scores, and
                  the map onto the reference's scale for a provider that shares it calibrated
    prober.py     Prober: canary probes when due, once per fleet through fleet.py
    fleet.py      VerdictStore: leases and published canary scores in Redis (or nothing shared)
    shadower.py   Shadower: a share of upstream scorings also to the next provider
    board.py      QualityBoard: verdicts and agreement per scoring identity, kept across reloads
    standing.py   standing: a failing provider against chance and BM25 on its canary

    canary.py     CanaryLine, load_canary, builtin_canary: queries with known answers
    judge.py      judge: the share of (relevant, irrelevant) pairs ordered, per language, graded
    agreement.py  agreement, kendall_tau_b, mean_absolute_difference: two score lists compared
    tracker.py    AgreementTracker: rolling agreement with the reference, in bounded memory
    calibration.py  calibrate: a strictly increasing map from one provider's scale onto another's
    probe.py      run_canary: a canary through any scoring function, judged

Only prober.py and shadower.py call providers (through resilience's GuardedCall); in the other
modules scoring is a function the caller passes, so tests drive them directly.

May import: resilience, providers, budget, observability, redisio, config, models, errors. Not scoring,
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
