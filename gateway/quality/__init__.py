"""The quality guard's pure parts: is a provider serving the model it claims, and do two agree?

    canary.py     CanaryLine, load_canary, builtin_canary: queries with known answers
    judge.py      judge: every relevant passage above every irrelevant one, on every line
    agreement.py  agreement, kendall_tau_b, mean_absolute_difference: two score lists compared
    tracker.py    AgreementTracker: rolling agreement with the reference, in bounded memory
    probe.py      run_canary: a canary through any scoring function, judged

No network in here: scoring is a function the caller passes, so the router decides how a probe
is sent (budgets, breakers) and tests drive these parts directly.
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
