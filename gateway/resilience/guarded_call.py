"""One provider call, guarded: budget reserved, breaker asked, time bounded, transient failures retried.

    admit    the breaker (skip when open, unless the router invokes the panic rule), then the
             budget reservation (skip when it does not fit); the time the ledger took is added
             to the attempt's, so a slow ledger never cuts the provider's call short
    call     the provider, each try bounded by the attempt's end and by how slow the provider
             is allowed to be; retried on the same provider for transient failures with
             full-jitter backoff or its Retry-After, within the attempt and the retry budget
    account  settle the reservation to the real cost (or release it), tell the breaker: a call
             cut by its time limit or by the request's deadline is a timeout like any other

A 429 is the provider's word on when to come back, not a failure: it sets the provider's "not
before" time (its Retry-After, else `resilience.rate_limit_seconds`), which every request of the
process respects (admit skips it as `rate_limited`); it is not retried here, so the request moves
to the next provider at once (the router waits it out only when nobody else can answer), and it
never counts towards the breaker, which would keep the provider out past its Retry-After.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from gateway.budget import (
    Ledger,
    Limit,
    Refusal,
    Reservation,
    gateway_limit,
    is_payer_scope,
    provider_limit,
    scope_label,
    unheld_reservation,
    utc_now,
)
from gateway.config import GatewayConfig
from gateway.errors import ProviderFailure
from gateway.models import AnsweredCall, Batch, Usage, merge_answered, total_usage
from gateway.observability.metrics import UPSTREAM_ERROR_REASONS, CallPurpose, GatewayMetrics
from gateway.observability.trace import note_attempt
from gateway.observability.tracing import Tracing
from gateway.providers.client import ProviderClient
from gateway.resilience import full_jitter_backoff, parse_retry_after
from gateway.resilience.health import REPEATING_KINDS, HealthBoard, ProviderHealth
from gateway.resilience.refusal import REFUSAL_STATUSES, AuthRefusal

log = logging.getLogger("gateway.providers")

# A reservation outlives its call by this much, so a slow settle never frees budget early.
_HOLD_MARGIN_SECONDS = 30.0
# A cancellation this close to the attempt's end was the deadline's doing, not a hedge's.
_DEADLINE_SLACK_SECONDS = 0.005


class GuardedCall:
    def __init__(
        self, config: GatewayConfig, ledger: Ledger, health: HealthBoard, metrics: GatewayMetrics,
        tracing: Tracing | None = None,
    ) -> None:
        self._config = config
        self._ledger = ledger
        self._health = health
        self._metrics = metrics
        self._tracing = tracing or Tracing.off()
        self._limits: dict[tuple[str, tuple[Limit, ...]], tuple[tuple[Limit, ...], bool]] = {}

    def own_limit(self, client: ProviderClient, pairs: int) -> float:
        """The most one try at this provider may take: its timeout, or less once it is known to be faster."""
        settings = self._config.resilience
        slow = self._health[client.name].latency.slow_after(
            pairs, settings.attempt_p99_multiple, settings.attempt_min_ms / 1000
        )
        ceiling = client.config.timeout_seconds
        return ceiling if slow is None else min(ceiling, slow)

    async def score(
        self, client: ProviderClient, pairs: Batch, ends_at: float | None, panic: bool = False,
        answered: list[AnsweredCall] | None = None,
        purpose: CallPurpose = "request",
        hedged: bool = False,
        budgets: tuple[Limit, ...] = (),
    ) -> tuple[list[float], Usage]:
        """Scores from this provider before `ends_at` (event-loop time), or a ProviderFailure.

        `panic`: every provider's breaker is open and this one opened first; call it anyway.
        `answered` receives each upstream call that answers (by the slots of `pairs`) as it does:
        what answered is settled at its cost however the rest ends, never released.
        `purpose` labels the HTTP calls in the metrics (a probe's are not a client's); `hedged`: the
        router started this call beside a slow one (both only describe the call, in its trace span).
        `budgets`: the client's and its team's, held with the provider's and the gateway's, all or none.
        """
        health = self._health[client.name]
        answered = [] if answered is None else answered
        chars = client.adapter.billed_chars(pairs)
        self._admit(client, health, panic)
        try:
            limits, enforced = self._limits_of(client, budgets)
            if enforced:
                reserving_since = _now()
                reservation = await self._reserve(client, limits, chars, ends_at)
                if ends_at is not None:
                    # The ledger's time is not the provider's: a slow or hung ledger (bounded on its
                    # own) must not cut the call short, nor count against the provider's breaker.
                    ends_at += _now() - reserving_since
            else:  # nothing to enforce: no ledger call before the provider's, only spend to track
                reservation = unheld_reservation(limits, utc_now())
        except BaseException:
            health.breaker.record_cancelled()  # a claimed probe slot goes back unused
            raise
        called_at = time.monotonic()  # durations need no loop time (which is read at a system call's cost)
        try:
            scores, usage = await self._call_with_retries(
                client, health, pairs, ends_at, panic, answered, purpose, hedged)
        except ProviderFailure as failure:
            await asyncio.shield(self._account(client, reservation, pairs, chars, answered))
            if failure.kind == "http_429":
                health.breaker.record_cancelled()  # no verdict on its health: it said when to come back
                self._health.note_error(client.name, failure.reason)
                raise dataclasses.replace(failure, ends_in=health.rate_limited_for()) from None
            if failure.status in REFUSAL_STATUSES:
                # Not the breaker's: no cool-down of 15 s brings a revoked key back.
                health.breaker.record_cancelled()
                raise self._refused(client, health, failure) from None
            if not failure.fallback_allowed:
                health.breaker.record_cancelled()  # the request was at fault, not the provider
                raise
            self._record_failure(client.name, health, failure.reason)
            status = health.breaker.status()
            raise dataclasses.replace(failure, ends_in=status.seconds_until_probe) from None
        except BaseException:
            if ends_at is not None and _now() >= ends_at - _DEADLINE_SLACK_SECONDS:
                # Cut by the request's deadline: slow is a failure, or a hanging provider would
                # be called by every request until each one ran out of time.
                self._record_failure(client.name, health, "no answer before the request's deadline")
                self._observe_call(client, pairs, time.monotonic() - called_at, "timeout", panic, purpose)
            else:
                health.breaker.record_cancelled()  # a hedge won or the client left: no verdict
            await asyncio.shield(self._account(client, reservation, pairs, chars, answered))
            raise
        self._record_success(client.name, health)
        # Shielded like every settle here: a request cancelled meanwhile (its deadline, a hedge
        # that won, a client gone) must not lose what the provider has billed already.
        await asyncio.shield(self._account(client, reservation, pairs, chars, answered, usage))
        return scores, usage

    async def _account(
        self, client: ProviderClient, reservation: Reservation, pairs: Batch, chars: int, answered: list[AnsweredCall],
        usage: Usage | None = None,
    ) -> None:
        """Settle the reservation to what the calls that answered cost; release it only when none did.

        `usage`: their total, when the caller has it already (merge_answered's).
        """
        if not answered:
            await self._ledger.release(reservation)
            return
        if usage is None:
            usage = total_usage(answered)
        await self._ledger.settle(
            reservation, usage.cost_usd, usage.tokens,
            estimated_usd=usage.estimated_cost_usd, estimated_tokens=usage.estimated_tokens,
        )
        self._metrics.record_usage(
            provider=client.name, tokens=usage.tokens, cost_usd=usage.cost_usd,
            estimated_tokens=usage.estimated_tokens, estimated_cost_usd=usage.estimated_cost_usd,
        )
        self._metrics.history.record_spend(client.name, usage.cost_usd)
        self._learn(client, pairs, chars, answered)

    def _learn(self, client: ProviderClient, pairs: Batch, chars: int, answered: list[AnsweredCall]) -> None:
        """Weigh the calls that reported usage into the provider's estimate and the pooled one."""
        health = self._health[client.name]
        for call in answered:
            if call.usage.estimated_tokens or not call.usage.tokens:
                continue  # an estimate taught nothing
            whole = len(call.slots) == len(pairs)
            call_chars = chars if whole else client.adapter.billed_chars(pairs.only(call.slots))
            health.estimator.observe(call_chars, call.usage.tokens)
            self._health.pooled_estimator.observe(call_chars, call.usage.tokens)
            health.reported_calls += 1

    def _limits_of(self, client: ProviderClient, budgets: tuple[Limit, ...]) -> tuple[tuple[Limit, ...], bool]:
        """The provider's budget, the gateway's and the client's and team's, and whether any limits
        anything: fixed for this config generation, so worked out once per provider and client."""
        known = self._limits.get((client.name, budgets))
        if known is None:
            limits = (provider_limit(client.name, client.config), gateway_limit(self._config), *budgets)
            enforced = any(limit.daily_usd is not None or limit.monthly_usd is not None for limit in limits)
            known = self._limits[(client.name, budgets)] = (limits, enforced)
        return known

    def _admit(self, client: ProviderClient, health: ProviderHealth, panic: bool) -> None:
        if (wait := health.rate_limited_for()) > 0:
            skip = ProviderFailure(client.name, f"rate limited for {wait:.1f}s more (its 429's Retry-After)",
                                   kind="rate_limited", ends_in=wait)
            self.note_skip(skip)
            raise skip
        if not health.refusal.claim_probe(client.identity):
            refusal = health.refusal.current(client.identity)
            assert refusal is not None  # claim_probe refuses only during a refusal
            skip = refusing_skip(client.name, refusal, health.refusal.seconds_until_probe(client.identity))
            self.note_skip(skip)
            raise skip
        if panic:
            health.breaker.admit_panic()
            return
        if health.breaker.allow():
            return
        # Half open, with its one probe already out: it settles within the provider's timeout.
        skip = ProviderFailure(client.name, "circuit half open: its probe is out", kind="breaker_open",
                               ends_in=client.config.timeout_seconds)
        self.note_skip(skip)
        raise skip

    def _refused(self, client: ProviderClient, health: ProviderHealth, failure: ProviderFailure) -> ProviderFailure:
        """A 401/403: the provider is out on a growing back-off until it answers or its credentials change."""
        assert failure.status is not None
        refusal = health.refusal.refused(failure.status, failure.reason, client.identity)
        wait = health.refusal.seconds_until_probe(client.identity)
        self._health.note_error(client.name, f"{failure.reason} (refusing: {refusal.consecutive} in a row, "
                                f"next try in {wait:.0f} s)")
        if refusal.consecutive == 1:
            self._health.note_change(f"{client.name} refusing: {failure.reason}")
        log.warning("provider %s refuses our calls (%s), %d in a row: next try in %.0f s, or at once after "
                    "its key or base_url change", client.name, failure.reason, refusal.consecutive, wait)
        return dataclasses.replace(failure, ends_in=wait)

    def _record_success(self, provider: str, health: ProviderHealth) -> None:
        before = health.breaker.state
        health.breaker.record_success()
        after = health.breaker.state
        self._metrics.set_breaker_state(provider=provider, state=after)
        if health.refusal.answered():
            self._health.note_change(f"{provider} answers again after refusing")
            log.warning("provider %s answers again after refusing our calls", provider)
        if after != before:
            self._health.note_change(f"{provider} breaker {after.replace('_', ' ')}")
            log.info("provider %s: breaker %s", provider, after.replace("_", " "))

    def note_skip(self, skip: ProviderFailure) -> None:
        """A provider passed over for its breaker, budget, rate limit or quality, in the metrics and the request log."""
        # A skip's kind is one of SKIP_KINDS, all of them reasons; record_upstream_error checks it.
        self._metrics.record_upstream_error(provider=skip.provider, reason=skip.kind)  # type: ignore[arg-type]
        note_attempt(skip.provider, skip.kind, 0.0)
        if skip.kind in REPEATING_KINDS:  # refusals the operator should see beside the failures
            self._health.note_error(skip.provider, f"skipped: {skip.reason}", skip.kind)

    def _record_failure(self, provider: str, health: ProviderHealth, reason: str) -> None:
        before = health.breaker.state
        health.breaker.record_failure(reason)
        self._health.note_error(provider, reason)
        after = health.breaker.state
        self._metrics.set_breaker_state(provider=provider, state=after)
        if after != before:
            self._health.note_change(f"{provider} breaker {after.replace('_', ' ')}: {reason}")
            log.warning("provider %s: breaker %s after: %s", provider, after.replace("_", " "), reason)

    async def _reserve(
        self, client: ProviderClient, limits: tuple[Limit, ...], chars: int, ends_at: float | None
    ) -> Reservation:
        price = client.config.price_per_million_tokens
        tokens = self._health.billing_estimator(client.name).estimate_tokens(chars)
        hold = _HOLD_MARGIN_SECONDS + (ends_at - _now() if ends_at is not None else client.config.timeout_seconds * 3)
        outcome = await self._ledger.reserve(limits, tokens * price / 1e6, hold_seconds=max(hold, 1.0), tokens=tokens)
        if isinstance(outcome, Refusal):
            period = "daily" if outcome.period == "day" else "monthly"
            skip = ProviderFailure(
                client.name,
                f"{scope_label(outcome.scope)} {period} budget of ${outcome.limit_usd:g} would be exceeded "
                f"in {outcome.window} (spent ${outcome.spent_usd:.6f}, in flight ${outcome.reserved_usd:.6f})",
                kind="budget",
                resets_at=outcome.resets_at,
                payer_over_budget=is_payer_scope(outcome.scope),
            )
            self._health.note_budget_refusal(outcome.scope, outcome.period, outcome.resets_at.timestamp())
            self.note_skip(skip)
            raise skip
        return outcome

    async def _call_with_retries(
        self, client: ProviderClient, health: ProviderHealth, pairs: Batch, ends_at: float | None, panic: bool,
        answered: list[AnsweredCall],
        purpose: CallPurpose,
        hedged: bool = False,
    ) -> tuple[list[float], Usage]:
        """The provider's scores of `pairs`; a retry sends only the pairs no call has answered yet."""
        health.retry_budget.record_call()
        attempt = 0
        while True:
            started = time.monotonic()
            batch = _unanswered(answered, pairs)
            try:
                before = len(answered)
                with self._tracing.attempt(client.name, len(batch), panic, hedged, purpose) as span:
                    try:
                        await self._bounded_call(client, batch, ends_at, answered)
                    finally:  # what this try's answered calls billed, cut off or not
                        if span.recording:
                            span.tokens(sum(call.usage.tokens for call in answered[before:]))
            except ProviderFailure as failure:
                self._observe_call(client, batch, time.monotonic() - started, failure.kind, panic, purpose)
                if failure.kind == "http_429":
                    asked = parse_retry_after(failure.retry_after, time.time())
                    health.rate_limit(self._config.resilience.rate_limit_seconds if asked is None else asked)
                    raise  # every request now passes it over until then, this one included
                wait = self._retry_wait(failure, attempt, health, ends_at)
                if wait is None:
                    raise
                health.retry_budget.record_retry()
                attempt += 1
                await asyncio.sleep(wait)
                continue
            elapsed = time.monotonic() - started
            health.latency.record(elapsed, len(batch))
            self._observe_call(client, batch, elapsed, "ok", panic, purpose)
            return merge_answered(answered, pairs)

    async def _bounded_call(
        self, client: ProviderClient, batch: Batch, ends_at: float | None, answered: list[AnsweredCall],
    ) -> None:
        """One try at `batch`; its answered calls go into `answered` (by slot, as every layer names pairs)."""
        limit = self.own_limit(client, len(batch))
        if ends_at is not None:
            limit = min(limit, ends_at - _now())
        try:  # cut off or not, what answered is in `answered` already
            async with asyncio.timeout(max(0.0, limit)):
                await client.score_into(batch, answered, self._health.billing_estimator(client.name).estimate_tokens)
        except TimeoutError:
            raise ProviderFailure(client.name, f"timed out after {limit:.3g}s", kind="timeout") from None

    def _observe_call(
        self, client: ProviderClient, pairs: Batch, seconds: float, outcome: str, panic: bool, purpose: CallPurpose
    ) -> None:
        provider = client.name
        self._metrics.record_upstream_call(
            provider=provider, seconds=seconds, purpose=purpose, calls=client.http_calls(pairs)
        )
        if outcome in UPSTREAM_ERROR_REASONS:
            # The check above makes it a reason; mypy does not narrow a str by frozenset membership.
            self._metrics.record_upstream_error(provider=provider, reason=outcome)  # type: ignore[arg-type]
        note_attempt(provider, outcome, seconds, panic=panic)

    def _retry_wait(self, failure: ProviderFailure, attempt: int, health: ProviderHealth, ends_at: float | None) -> float | None:
        """Seconds to wait before trying the same provider again, or None: move on."""
        settings = self._config.resilience
        if not failure.transient or attempt >= settings.max_retries or not health.retry_budget.can_retry():
            return None
        backoff = full_jitter_backoff(attempt, settings.retry_base_ms / 1000, settings.retry_cap_ms / 1000, self._health.rng)
        asked = parse_retry_after(failure.retry_after, time.time())
        wait = max(backoff, asked or 0.0)
        if ends_at is not None and _now() + wait >= ends_at:
            return None  # the wait alone would spend this attempt's time: better the next provider
        return wait


def _unanswered(answered: list[AnsweredCall], pairs: Batch) -> Batch:
    """The pairs no call has answered yet: all of them on a first try, nearly every one."""
    if not answered:
        return pairs
    done = {slot for call in answered for slot in call.slots}
    return pairs.only([slot for slot in pairs.numbers if slot not in done])


def _now() -> float:
    return asyncio.get_running_loop().time()


def refusing_skip(provider: str, refusal: AuthRefusal, wait: float) -> ProviderFailure:
    """Passed over while a 401/403 back-off runs: the provider's own words, and when it is tried again."""
    return ProviderFailure(
        provider, f"refusing our calls: {refusal.reason} ({refusal.consecutive} in a row; next try in {wait:.0f} s)",
        kind="refusing", status=refusal.status, ends_in=wait,
    )
