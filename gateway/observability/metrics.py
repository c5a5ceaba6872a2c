"""Prometheus metrics for the gateway: one GatewayMetrics per app, with its own registry.

Every metric lives on a GatewayMetrics instance and is registered in that instance's own
CollectorRegistry, never prometheus-client's default one, so tests can build many apps in one
process and none sees another's numbers.

Several workers on one port (prometheus-client's multiprocess mode): when the environment
variable PROMETHEUS_MULTIPROC_DIR names a directory, each worker writes its values to files
there and `render()` merges the files of all workers, dead ones included, so counters never go
backwards when a worker is replaced. prometheus-client decides the mode when it is first
imported, so the variable must be set before the process starts (the supervisor exports it and
empties the directory with `clear_multiprocess_dir`); a GatewayMetrics built after the variable
changed refuses to start rather than quietly count in the wrong place. When a worker dies, the
supervisor calls `mark_process_dead(pid)` so the worker's gauges stop counting.

In multiprocess mode, instances in one process share values (the files are per process and
metric name): build one per process there.

Label values are the caller's promise of a small set: pass canonical model and provider names,
never what a client typed, and budget windows as "day" / "month", never a date.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

from gateway.observability.history import MinuteHistory
from gateway.observability.tally import Tally

MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

UpstreamErrorReason = Literal[
    "timeout", "connect_timeout", "read_timeout", "dns", "refused", "tls", "connect", "too_large", "malformed",
    "redirect", "http_5xx", "http_429", "http_4xx", "invalid_answer", "budget", "breaker_open", "quality",
    "rate_limited", "refusing",
]
UPSTREAM_ERROR_REASONS: Final[frozenset[str]] = frozenset(get_args(UpstreamErrorReason))

# Why the gateway called a provider: a client's request, a canary probe, or a shadow comparison.
CallPurpose = Literal["request", "probe", "shadow"]


# The one list of a circuit breaker's states (gateway.resilience.breaker and the status page use
# this one), in gauge order: a state's gauge value is its position, 0 closed .. 2 open. Defined at
# this layer because metrics may import nothing of the gateway's and every layer reports here.
BreakerState = Literal["closed", "half_open", "open"]
BREAKER_STATE_VALUES: Final[Mapping[str, int]] = {state: value for value, state in enumerate(get_args(BreakerState))}
# The one list of what a provider is doing now (gateway.web.provider_state says what each means).
ProviderStateName = Literal[
    "usable", "refusing", "failing", "rate_limited", "over_budget", "canary_failing", "erroring", "unusable",
    "disabled",
]
PROVIDER_STATES: Final[tuple[str, ...]] = get_args(ProviderStateName)

# 1 ms .. 30 s: a cache hit answers in about a millisecond, a slow provider in tens of seconds.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# 0.1 ms .. 100 ms: what the gateway itself adds on top of waiting for providers.
OVERHEAD_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class MetricsModeError(RuntimeError):
    """PROMETHEUS_MULTIPROC_DIR and prometheus-client's import-time mode disagree, or the dir is missing."""


class GatewayMetrics:
    """The gateway's metrics; methods are named for the event the request path reports."""

    def __init__(self) -> None:
        self.multiprocess_dir = _checked_multiprocess_dir()
        # No `*_created` series: nobody graphs them and they double the counters' lines. The switch
        # is prometheus-client's process-wide one (read at scrape time, so calling it here is in
        # time); multiprocess mode never writes them, so both modes agree.
        disable_created_metrics()
        # Multiprocess metrics are read back from their files at render time; registering them
        # as well would only offer a registry holding this one worker's share.
        registry = None if self.multiprocess_dir else CollectorRegistry()
        self._registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._event_children: dict[tuple[str | int, ...], tuple[Any, ...]] = {}
        self._breaker_states: dict[str, BreakerState] = {}  # as last written to the gauge
        self._tally = Tally()  # the request path's counters and histograms, written 50 ms after the first
        # The last hour per minute for /status: this process's own, never merged through the dir.
        self.history = MinuteHistory()

        self._requests = Counter(
            "rerank_gateway_requests", "Rerank requests answered, by dialect, model and HTTP status.",
            ["dialect", "model", "status"], registry=registry,
        )
        self._request_seconds = Histogram(
            "rerank_gateway_request_duration_seconds", "Time to answer a rerank request, end to end.",
            ["dialect", "model"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self._overhead_seconds = Histogram(
            "rerank_gateway_overhead_seconds",
            "Request time not spent waiting on providers: decoding, cache, merging, encoding.",
            buckets=OVERHEAD_BUCKETS, registry=registry,
        )
        self._upstream_calls = Counter(
            "rerank_gateway_upstream_calls",
            "HTTP calls made to a provider, whatever their outcome, by purpose: request, probe (canary) or shadow.",
            ["provider", "purpose"], registry=registry,
        )
        self._upstream_seconds = Histogram(
            "rerank_gateway_upstream_duration_seconds", "Time one HTTP call to a provider took.",
            ["provider"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self._upstream_errors = Counter(
            "rerank_gateway_upstream_errors",
            "Provider attempts that gave no usable answer, by reason; budget, breaker_open and quality "
            "(fails its canary) are refusals before any call.",
            ["provider", "reason"], registry=registry,
        )
        self._cache_hits = Counter(
            "rerank_gateway_cache_hits", "Pairs answered from the score cache.", ["model"], registry=registry
        )
        self._cache_misses = Counter(
            "rerank_gateway_cache_misses", "Pairs the score cache did not hold.", ["model"], registry=registry
        )
        self._tokens = Counter(
            "rerank_gateway_upstream_tokens", "Tokens providers billed.", ["provider"], registry=registry
        )
        self._cost_usd = Counter(
            "rerank_gateway_upstream_cost_usd", "What provider calls cost, in US dollars.", ["provider"],
            registry=registry,
        )
        # The part of the two above the gateway estimated, for answers that reported no usage (TEI's never do).
        self._estimated_tokens = Counter(
            "rerank_gateway_upstream_estimated_tokens",
            "Of rerank_gateway_upstream_tokens, those the gateway estimated: the answer reported none.",
            ["provider"], registry=registry,
        )
        self._estimated_cost_usd = Counter(
            "rerank_gateway_upstream_estimated_cost_usd",
            "Of rerank_gateway_upstream_cost_usd, what was priced from the gateway's token estimate.",
            ["provider"], registry=registry,
        )
        # What the ledger was billed, split by where the figure came from: the provider's usage
        # ("reported") or the gateway's own estimate for an answer without usage ("estimated").
        self._spend_usd = Counter(
            "rerank_gateway_spend_usd", "Spend billed to the ledger, in US dollars, by where the figure came from.",
            ["provider", "source"], registry=registry,
        )
        self._fallbacks = Counter(
            "rerank_gateway_fallbacks", "Times a request moved on from one provider to the next.",
            ["model", "from_provider", "to_provider"], registry=registry,
        )
        self._failing_answers = Counter(
            "rerank_gateway_quality_failing_answers",
            "Answers served by a provider that fails its canary, because nothing better could answer "
            "(or the model's quality action is warn); each carries X-Rerank-Quality: failing.",
            ["model", "provider"], registry=registry,
        )
        self._panic_calls = Counter(
            "rerank_gateway_panic_calls",
            "Calls made although the provider's breaker was open, because every provider of the model "
            "had an open breaker (the panic rule): nonzero means a joint outage.",
            ["model", "provider"], registry=registry,
        )
        self._provider_quality = Gauge(
            "rerank_gateway_provider_quality",
            "1 while a provider passes its model's canary, 0 while it fails; unset until probed.",
            ["model", "provider"], registry=registry, multiprocess_mode="livemin",
        )
        self._provider_language_quality = Gauge(
            "rerank_gateway_provider_language_quality",
            "1 while a provider passes the canary lines of one language, 0 while it fails them; a query "
            "in that language follows this verdict where a model's plans differ by language.",
            ["model", "provider", "language"], registry=registry, multiprocess_mode="livemin",
        )
        self._provider_agreement = Gauge(
            "rerank_gateway_provider_agreement",
            "A provider's agreement with its model's reference: measure mae (mean |score difference|), "
            "kendall_tau (rank correlation), mae_calibrated (mean |difference| once mapped onto the "
            "reference's scale, out of sample) or calibration_pairs (pairs the map was fitted on), "
            "from canary probes and shadow traffic.",
            ["model", "provider", "measure"], registry=registry, multiprocess_mode="livemostrecent",
        )
        # Across workers: budgets are read from one shared ledger, so the latest reading is the
        # truest; a breaker is per worker, so the worst one (open) is what to page on.
        self._budget_remaining = Gauge(
            "rerank_gateway_budget_remaining_usd", "Budget left in a scope's current window, in US dollars.",
            ["scope", "window"], registry=registry, multiprocess_mode="livemostrecent",
        )
        self._cache_bytes = Gauge(
            "rerank_gateway_cache_bytes", "Bytes the in-process score cache holds (what cache.max_bytes bounds).",
            registry=registry, multiprocess_mode="livesum",
        )
        self._provider_state = Gauge(
            "rerank_gateway_provider_state",
            "What a provider is doing now: 1 for its current state (usable, refusing, failing, rate_limited, "
            "over_budget, unusable, disabled), 0 for the others; read at scrape time.",
            ["provider", "state"], registry=registry, multiprocess_mode="livemax",
        )
        self._provider_refused_status = Gauge(
            "rerank_gateway_provider_refused_status",
            "The HTTP status (401, 403) a provider refuses our calls with; 0 while it does not.",
            ["provider"], registry=registry, multiprocess_mode="livemax",
        )
        self._breaker_state = Gauge(
            "rerank_gateway_breaker_state", "A provider's circuit breaker: 0 closed, 1 half open, 2 open.",
            ["provider"], registry=registry, multiprocess_mode="livemax",
        )

        # Clients' labels are names from the config or the admin API, never what a request sent.
        self._client_requests = Counter(
            "rerank_gateway_client_requests", "Rerank requests answered, by client, team and HTTP status.",
            ["client", "team", "status"], registry=registry,
        )
        self._client_pairs = Counter(
            "rerank_gateway_client_pairs", "Pairs (documents) a client's answered requests held.",
            ["client", "team"], registry=registry,
        )
        self._client_spend = Counter(
            "rerank_gateway_client_spend_usd", "What a client's requests cost upstream, in US dollars.",
            ["client", "team"], registry=registry,
        )

        self._accept_errors = Counter(
            "rerank_gateway_accept_errors",
            "Connections the server could not accept for lack of resources (file descriptors, memory).",
            registry=registry,
        )

    def _children_of(self, key: tuple[str | int, ...], build: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
        """The labelled children one event reports to, built once per label values (see _child)."""
        children = self._event_children.get(key)
        if children is None:
            children = self._event_children[key] = build()
        return children

    def _child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), remembered: prometheus-client validates labels on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- the request ------------------------------------------------------------------------

    def record_request(
        self, *, dialect: str, model: str, status: int, seconds: float, upstream_seconds: float = 0.0
    ) -> None:
        """One answered request. upstream_seconds is wall time spent waiting on providers."""
        count, duration = self._children_of(
            ("request", dialect, model, status),
            lambda: (self._requests.labels(dialect, model, str(status)), self._request_seconds.labels(dialect, model)),
        )
        self._tally.inc(count)
        self._tally.observe(duration, seconds)
        self._tally.observe(self._overhead_seconds, max(0.0, seconds - upstream_seconds))

    def record_client_request(self, *, client: str, team: str, status: int, pairs: int, cost_usd: float) -> None:
        """One request of a named client (or the anonymous one): counted, its pairs and its cost."""
        count, paired, spent = self._children_of(
            ("client", client, team, status),
            lambda: (self._client_requests.labels(client, team, str(status)), self._client_pairs.labels(client, team),
                     self._client_spend.labels(client, team)),
        )
        self._tally.inc(count)
        if pairs:
            self._tally.inc(paired, pairs)
        if cost_usd:
            self._tally.inc(spent, cost_usd)

    def record_cache(self, *, model: str, hits: int, misses: int) -> None:
        """Score-cache lookups of one request, counted in pairs."""
        found, missed = self._children_of(
            ("cache", model), lambda: (self._cache_hits.labels(model), self._cache_misses.labels(model))
        )
        self._tally.inc(found, hits)
        self._tally.inc(missed, misses)

    # -- providers --------------------------------------------------------------------------

    def record_upstream_call(
        self, *, provider: str, seconds: float, purpose: CallPurpose = "request", calls: int = 1
    ) -> None:
        """One try at a provider, successful or not: `calls` HTTP calls (a kind that takes one query
        per call splits a many-query batch), `seconds` for all of them together."""
        made, duration = self._children_of(
            ("upstream", provider, purpose),
            lambda: (self._upstream_calls.labels(provider, purpose), self._upstream_seconds.labels(provider)),
        )
        self._tally.inc(made, calls)
        self._tally.observe(duration, seconds)

    def record_upstream_error(self, *, provider: str, reason: UpstreamErrorReason) -> None:
        if reason not in UPSTREAM_ERROR_REASONS:
            raise ValueError(f"upstream error reason {reason!r} is not one of {sorted(UPSTREAM_ERROR_REASONS)}")
        self._child(self._upstream_errors, provider, reason).inc()

    def record_usage(
        self, *, provider: str, tokens: int, cost_usd: float, estimated_tokens: int = 0, estimated_cost_usd: float = 0.0
    ) -> None:
        """What answered calls billed; the estimated_* part is also in tokens and cost_usd."""
        estimated = min(max(0.0, estimated_cost_usd), cost_usd)
        counters = self._children_of(("usage", provider), lambda: (
            self._tokens.labels(provider), self._cost_usd.labels(provider), self._estimated_tokens.labels(provider),
            self._estimated_cost_usd.labels(provider), self._spend_usd.labels(provider, "reported"),
            self._spend_usd.labels(provider, "estimated"),
        ))
        amounts = (tokens, cost_usd, estimated_tokens, estimated_cost_usd, max(0.0, cost_usd - estimated), estimated)
        for counter, amount in zip(counters, amounts):
            # Every series is there from the first call on (a scrape shows its 0), but adding 0 is
            # skipped: a provider that reports its usage never has an estimated part.
            if amount:
                self._tally.inc(counter, amount)

    def record_fallback(self, *, model: str, from_provider: str, to_provider: str) -> None:
        self._child(self._fallbacks, model, from_provider, to_provider).inc()

    def record_accept_error(self) -> None:
        self._accept_errors.inc()

    def record_failing_answer(self, *, model: str, provider: str) -> None:
        self._child(self._failing_answers, model, provider).inc()

    def record_panic_call(self, *, model: str, provider: str) -> None:
        self._child(self._panic_calls, model, provider).inc()

    def set_provider_quality(self, *, model: str, provider: str, passing: bool) -> None:
        self._child(self._provider_quality, model, provider).set(1 if passing else 0)

    def set_provider_language_quality(self, *, model: str, provider: str, language: str, passing: bool) -> None:
        self._child(self._provider_language_quality, model, provider, language).set(1 if passing else 0)

    def set_provider_agreement(self, *, model: str, provider: str, measure: str, value: float) -> None:
        """measure is "mae", "kendall_tau", "mae_calibrated" or "calibration_pairs"."""
        self._child(self._provider_agreement, model, provider, measure).set(value)

    def set_breaker_state(self, *, provider: str, state: BreakerState) -> None:
        # Called after every answered call: the gauge is written only when the state moved.
        if self._breaker_states.get(provider) != state:
            self._child(self._breaker_state, provider).set(BREAKER_STATE_VALUES[state])
            self._breaker_states[provider] = state

    def set_provider_state(self, *, provider: str, state: ProviderStateName, refused_status: int) -> None:
        for name in PROVIDER_STATES:
            self._child(self._provider_state, provider, name).set(1 if name == state else 0)
        self._child(self._provider_refused_status, provider).set(refused_status)

    def set_budget_remaining(self, *, scope: str, window: str, usd: float) -> None:
        """Budget left; window is the period ("day", "month"). Leave unlimited windows unset."""
        self._child(self._budget_remaining, scope, window).set(usd)

    def set_cache_bytes(self, stored: int) -> None:
        self._cache_bytes.set(stored)

    # -- exposition -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the request path's pending counts now (a scrape, a process about to exit)."""
        self._tally.flush()

    def render(self) -> tuple[bytes, str]:
        """The body and Content-Type for GET /metrics: every worker's numbers in multiprocess mode."""
        self.flush()
        if self.multiprocess_dir:
            return render_multiprocess(self.multiprocess_dir)
        assert self._registry is not None
        return generate_latest(self._registry), CONTENT_TYPE_LATEST


def render_multiprocess(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """Every worker's metrics merged from the files in path, into a registry made for this scrape."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.fspath(path))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Forget a dead worker's gauges (its counters and histograms stay in the totals).

    path defaults to $PROMETHEUS_MULTIPROC_DIR; without either this does nothing.
    """
    directory = os.fspath(path) if path is not None else os.environ.get(MULTIPROC_DIR_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)


def clear_multiprocess_dir(path: str | os.PathLike[str]) -> None:
    """Remove every worker's files: for the supervisor, before the first worker starts."""
    for file in glob.glob(os.path.join(os.fspath(path), "*.db")):
        os.remove(file)


def _checked_multiprocess_dir() -> str | None:
    directory = os.environ.get(MULTIPROC_DIR_ENV) or None
    # prometheus-client picked its value class when first imported; it must agree with the env now.
    library_multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
    if directory is None and library_multiprocess:
        raise MetricsModeError(
            f"prometheus-client was imported in multiprocess mode but ${MULTIPROC_DIR_ENV} is no longer set"
        )
    if directory is not None and not library_multiprocess:
        raise MetricsModeError(
            f"${MULTIPROC_DIR_ENV} is set but prometheus-client was imported before it was; "
            "set it in the environment the process starts with"
        )
    if directory is not None and not os.path.isdir(directory):
        raise MetricsModeError(f"${MULTIPROC_DIR_ENV}={directory!r} is not a directory")
    return directory
