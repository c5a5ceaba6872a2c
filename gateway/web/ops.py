"""Endpoints for operators: readiness, metrics, the status page, the OpenAPI document."""

from __future__ import annotations

import os
import time

from aiohttp import web

from gateway.budget import GATEWAY_SCOPE, every_limit, scope_label
from gateway.errors import BadRequest
from gateway.redisio.client import is_cluster_url
from gateway.resilience.health import Change
from gateway.runtime import Generation, LiveGateway
from gateway.scoring.router import first_opened
from gateway.web.budget_state import BudgetState, iso
from gateway.web.edge import LIVE, json_response
from gateway.web.openapi import openapi_spec
from gateway.web.provider_state import ProviderState, provider_state
from gateway.web.status_clients import client_rows
from gateway.web.status_page import (
    BudgetBar,
    CacheStatus,
    ModelStatus,
    ProviderStatus,
    StatusSnapshot,
    render_status_page,
)

STATUS_REFRESH_SECONDS = 10


async def readyz(request: web.Request) -> web.Response:
    """200 when every model has a usable provider and Redis (if configured) answers; else 503.

    Ready with warnings when a provider is not usable for a reason no replica can fix by being
    pulled (refusing, failing, rate limited, over budget, canary) or a budget is past its alert share.
    """
    live = request.app[LIVE]
    generation = live.current
    problems: list[str] = []
    warnings: list[str] = []
    if not await live.shared.cache.ping():
        problems.append("redis: not reachable (the cache serves uncached until it is back)")
    budgets = await _budget_state(live, generation)
    models = {}
    statuses = await _model_statuses(live, generation, budgets)
    for model in statuses:
        models[model.name] = {p.name: "usable" if p.usable else p.reason for p in model.fallback}
        warnings.extend(_quality_warnings(model))
        if model.over_budget_until is not None:
            # Every replica reads the same ledger: pulling this one would serve nothing more.
            warnings.append(f"model {model.name}: cannot pay for new pairs until {iso(model.over_budget_until)}; "
                            "cached pairs are still served")
        elif not model.servable and not any(p.skipped_for_quality for p in model.fallback):
            problems.append(f"model {model.name}: no usable provider")
        elif not model.servable:
            # A quality verdict never makes a replica unready: every replica judges alike, so
            # pulling this one would only move the same answers elsewhere, or leave none.
            warnings.append(f"model {model.name}: no provider serves; those left fail their canary")
        elif model.panic_provider is not None:
            # Still ready: taking this gateway out of rotation would make the outage total.
            warnings.append(f"model {model.name}: every breaker is open; panic rule routing to {model.panic_provider}")
    states = _provider_states(statuses)
    # Each provider once, whatever number of models it serves; disabled on purpose is no warning.
    warnings += [f"provider {name} {state.label}: {state.reason}" for name, state in states.items()
                 if state.name not in ("usable", "disabled", "canary_failing")]
    warnings += budgets.warnings()
    quality = {
        model.name: {p.name: p.quality.as_json() for p in model.fallback if p.quality is not None} for model in statuses
    }
    body = {
        "status": "not_ready" if problems else "ready", "problems": problems, "warnings": warnings, "models": models,
        "providers": {name: {**state.as_json(), "breaker": _breaker_of(statuses, name)} for name, state in states.items()},
        "quality": quality,
    }
    return json_response(body, status=503 if problems else 200)


def _provider_states(statuses: list[ModelStatus]) -> dict[str, ProviderState]:
    return {p.name: p.state for model in statuses for p in model.fallback if p.state is not None}


def _breaker_of(statuses: list[ModelStatus], provider: str) -> str:
    return next(p.breaker for model in statuses for p in model.fallback if p.name == provider)


def _quality_warnings(model: ModelStatus) -> list[str]:
    warnings = []
    for provider in model.fallback:
        quality = provider.quality
        if quality is None or quality.state != "failing":
            continue
        refused = [language for language, found in quality.languages.items() if not found["serves"]]
        if quality.serves and refused:
            served = [language for language, found in quality.languages.items() if found["serves"]]
            warnings.append(f"model {model.name}: provider {provider.name} fails its canary and serves only in "
                            f"{', '.join(served)}; not in {', '.join(refused)}: {quality.reason}")
        elif quality.serves:
            warnings.append(f"model {model.name}: provider {provider.name} fails its canary and serves, flagged "
                            f"(X-Rerank-Quality: failing), when no provider that passes can answer: {quality.reason}")
        else:
            warnings.append(f"model {model.name}: provider {provider.name} fails its canary and is not served: "
                            f"{provider.reason or quality.reason}")
    return warnings


async def metrics(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    await _refresh_provider_gauges(live)
    if (stored := live.shared.cache.stored_bytes()) is not None:
        live.shared.metrics.set_cache_bytes(stored)
    body, content_type = live.shared.metrics.render()
    # content_type= would refuse the charset parameter prometheus-client includes.
    return web.Response(body=body, headers={"Content-Type": content_type})


async def status_page(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    generation = live.current
    budgets = await _budget_state(live, generation)
    stats = live.shared.cache_stats
    snapshot = StatusSnapshot(
        generated_at=time.time(),
        config_loaded_at=generation.loaded_at,
        config_path=str(live.config_path) if live.config_path else None,
        models=tuple(await _model_statuses(live, generation, budgets)),
        cache=CacheStatus(
            backend=_cache_backend(generation.config.cache.url),
            hits=stats.hits,
            misses=stats.misses,
            saved_usd=stats.saved_usd,
            stored_bytes=live.shared.cache.stored_bytes(),
            max_bytes=generation.config.cache.max_bytes,
        ),
        recent_errors=tuple(reversed(live.shared.health.recent_errors)),
        gateway_budget=_bars(budgets, GATEWAY_SCOPE),
        refresh_seconds=_refresh_seconds(request),
        history=live.shared.metrics.history.view(),
        history_scope=_history_scope(live),
        last_change=_last_change(live, generation),
        clients=await client_rows(live),
    )
    return web.Response(text=render_status_page(snapshot), content_type="text/html")


def _last_change(live: LiveGateway, generation: Generation) -> Change:
    """The latest of: the config loaded, a breaker, a refusal, a verdict."""
    loaded = Change(generation.loaded_at, "config loaded")
    changes = [change for change in live.shared.health.changes if change.at >= generation.loaded_at]
    return changes[-1] if changes else loaded


async def status_json(request: web.Request) -> web.Response:
    """The series /status draws, for scripts: the last hour per minute, oldest minute first."""
    live = request.app[LIVE]
    return json_response({
        "generated_at": time.time(),
        "scope": "worker" if live.shared.metrics.multiprocess_dir else "process",
        "pid": os.getpid(),
        **live.shared.metrics.history.view().as_json(),
    })


def _history_scope(live: LiveGateway) -> str:
    # Several workers share the port (the metrics dir says so): each keeps its own hour in memory.
    if live.shared.metrics.multiprocess_dir:
        return f"this worker's own (pid {os.getpid()}); other workers keep theirs, /metrics merges them all"
    return "since this process started, at most the last hour"


def _refresh_seconds(request: web.Request) -> int:
    """`?refresh=N` seconds between reloads of /status; 0 turns it off; absent: every 10 s."""
    asked = request.query.get("refresh", str(STATUS_REFRESH_SECONDS))
    if not asked.isdigit() or int(asked) > 86_400:
        raise BadRequest(f"refresh: expected whole seconds from 0 (off) to 86400, got {asked[:20]!r}")
    return int(asked)


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_spec())


async def _refresh_provider_gauges(live: LiveGateway) -> None:
    """Budget left, breaker states and provider states, read at scrape time from the objects
    /readyz and /status read, so the three agree at the same moment."""
    generation = live.current
    reports = await live.shared.ledger.report(every_limit(generation.config))
    metrics = live.shared.metrics
    for report in reports:
        if report.remaining_usd is not None:
            metrics.set_budget_remaining(scope=scope_label(report.scope), window=report.period, usd=report.remaining_usd)
    budgets = BudgetState.read(reports, live.shared.health, generation.loaded_at)
    for name, client in generation.clients.items():
        health = live.shared.health[name]
        metrics.set_breaker_state(provider=name, state=health.breaker.state)
        state = provider_state(client, health, budgets.refusing_until(name))
        metrics.set_provider_state(provider=name, state=state.name, refused_status=state.status or 0)


def _cache_backend(url: str) -> str:
    if not url:
        return "memory"
    return "redis-cluster" if is_cluster_url(url) else "redis"


async def _budget_state(live: LiveGateway, generation: Generation) -> BudgetState:
    reports = await live.shared.ledger.report(every_limit(generation.config))
    return BudgetState.read(reports, live.shared.health, generation.loaded_at)


async def _model_statuses(live: LiveGateway, generation: Generation, budgets: BudgetState) -> list[ModelStatus]:
    statuses = []
    health = live.shared.health
    for name, model in generation.config.models.items():
        providers = []
        for provider in model.fallback:
            client = generation.clients[provider]
            breaker = health[provider].breaker
            over_budget_until = budgets.refusing_until(provider)
            skip = generation.router.why_not(name, provider, None, over_budget_until is not None)
            quality = generation.quality_guard.report(name, provider)
            if skip is not None and skip.kind == "quality" and quality.serves:
                skip = None  # passed over as a whole, yet served in the languages of its canary it ranks
            p95 = health[provider].latency.p95()
            providers.append(ProviderStatus(
                name=provider,
                kind=client.config.kind,
                usable=skip is None,
                reason=None if skip is None else skip.reason,
                rate_limited=skip is not None and skip.kind == "rate_limited",
                breaker=breaker.state,
                budget=_bars(budgets, provider),
                p95_ms=None if p95 is None else p95 * 1000,
                quality=quality,
                skipped_for_quality=skip is not None and skip.kind == "quality",
                state=provider_state(client, health[provider], over_budget_until, skip),
            ))
        panic = None
        if not any(p.usable for p in providers):
            panic = first_opened([p.name for p in providers if p.breaker != "closed"], health)
        statuses.append(ModelStatus(name=name, aliases=tuple(model.aliases), fallback=tuple(providers),
                                    panic_provider=panic, over_budget_until=_unpaid_until(providers, panic)))
    return statuses


def _unpaid_until(providers: list[ProviderStatus], panic: str | None) -> float | None:
    """When a model whose every provider that could answer is over budget can pay for new pairs again."""
    if panic is not None or any(p.usable for p in providers):
        return None
    ends = [p.state.until for p in providers if p.state is not None and p.state.name == "over_budget"]
    if not ends or any(p.state is None or p.state.name not in ("over_budget", "disabled", "unusable") for p in providers):
        return None
    return min(end for end in ends if end is not None)


def _bars(budgets: BudgetState, scope: str) -> tuple[BudgetBar, ...]:
    return tuple(
        BudgetBar(
            period="today" if window.report.period == "day" else "month",
            spent_usd=window.report.spent_usd,
            reserved_usd=window.report.reserved_usd,
            limit_usd=window.report.limit_usd,
            refusing=window.refusing,
        )
        for window in budgets.of(scope)
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})
