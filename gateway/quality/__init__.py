"""The quality guard: is a provider serving the model it claims, and do two agree?

    guard.py      QualityGuard: the router's answers (may a failing provider serve, the plan
                  order, which providers share cached scores); starts the prober and shadower
    prober.py     Prober: canary probes when due, once per fleet through fleet.py
    fleet.py      VerdictStore: leases and published canary scores in Redis (or nothing shared)
    shadower.py   Shadower: a share of upstream scorings also to the next provider
    board.py      QualityBoard: verdicts and agreement per provider, kept across reloads
    standing.py   standing: a failing provider against chance and BM25 on its canary

    canary.py     CanaryLine, load_canary, builtin_canary: queries with known answers
    judge.py      judge: every relevant passage above every irrelevant one, on every line
    agreement.py  agreement, kendall_tau_b, mean_absolute_difference: two score lists compared
    tracker.py    AgreementTracker: rolling agreement with the reference, in bounded memory
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
