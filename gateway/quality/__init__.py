"""The quality guard: is a provider serving the model it claims, and do two agree?

Glossary (one meaning each, across the gateway):

    quality guard   QualityGuard: this package's answers to the router (skip a failing provider?
                    the plan order, the cache groups) and the probes and shadow calls behind them
    guarded call    not here: gateway.resilience's GuardedCall, one provider call under budget,
                    breaker, retries and time bounds; probes and shadow calls go through it
    quality board   QualityBoard: what was learned per model and scoring identity (verdicts,
                    agreement), kept across reloads; its `version` moves with every change
    health board    not here: gateway.resilience's HealthBoard (breakers, latency, rate limits)
    verdict store   VerdictStore: the board's evidence shared with the fleet through Redis
    scoring identity  what scores: kind, URL, upstream model, path, transform (groups.scoring_identity)
    reference       the first provider in a model's fallback that passes its canary
    cache group     where a provider's scores of a model are cached (gateway.quality.groups)
    sharing         whether a provider's fresh scores may stand beside the reference's cached ones
    probe / prober  one canary run through a scoring function / the loop that runs them when due
    judge / standing  pass or fail on the canary / how a failing provider ranks against chance and BM25
    parts           Parts: what one config generation's planning, calls and quality checks share

    guard.py      QualityGuard: the router's answers (may a failing provider serve, the plan
                  order); builds the cache groups, starts the prober and shadower
    parts.py      Parts: config, clients, guarded call, boards, verdict store, background tasks
    groups.py     CacheGroups: the cache group of a provider's scores, named by what scores, and
                  the map onto the reference's scale for a provider that shares it
    sharing.py    the sharing rule: as is, calibrated, or apart
    prober.py     Prober: canary probes when due, once per fleet through verdict_store.py
    verdict_store.py  VerdictStore: leases and published canary scores in Redis (or nothing shared)
    shadower.py   Shadower: a share of upstream scorings also to the next provider
    background.py Background: probe loops and shadow calls, each in a context of its own
    board.py      QualityBoard: verdicts and agreement per scoring identity, kept across reloads
    figures.py    publish_quality: a model's quality figures in /metrics
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
