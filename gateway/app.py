"""create_app(config): the only place that wires the gateway together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.budget import Ledger, MemoryLedger, RedisLedger
from gateway.cache import MemoryScoreCache, ScoreCache
from gateway.cache.redis import RedisScoreCache
from gateway.clients import ClientStore, MemoryClientStore, MemoryRates, RateLimiter, RedisClientStore, RedisRates
from gateway.config import CacheConfig, ConfigError, GatewayConfig
from gateway.dialects import RERANK_ROUTES
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracing, build_tracing
from gateway.quality.verdict_store import LocalVerdicts, RedisVerdicts, VerdictStore
from gateway.resilience.health import HealthBoard
from gateway.runtime import FileSignature, LiveGateway, Shared, watch_config_file
from gateway.web import admin, admin_clients, edge, ops, rerank

# Bodies are checked against the live server.max_body_bytes while they are read; this only
# keeps aiohttp's own, fixed limit out of the way of a reload that raises ours.
_AIOHTTP_BODY_CEILING = 1 << 40


def create_app(
    config: GatewayConfig,
    config_path: str | os.PathLike[str] | None = None,
    *,
    ledger: Ledger | None = None,
    on_admin_reload: Callable[[], None] | None = None,
    tracing: Tracing | None = None,
    config_signature: FileSignature = None,
) -> web.Application:
    """The gateway app; with config_path it reloads that file on SIGHUP, /admin/reload and change.

    `ledger` replaces the one the config would build (tests give one with their own clock).
    `tracing` replaces the one config and OTEL_* would build (tests give an in-memory exporter).
    `on_admin_reload` runs after /admin/reload reloaded this process (a worker tells its
    supervisor, which reloads the other workers). `config_signature`: the file's, taken before
    `config` was read from it (see LiveGateway).
    """
    app = web.Application(client_max_size=_AIOHTTP_BODY_CEILING, middlewares=[edge.edge_middleware])
    shared = Shared(
        cache=build_cache(config.cache),
        ledger=ledger or build_ledger(config),
        health=HealthBoard(config.resilience),
        metrics=GatewayMetrics(),
        verdicts=build_verdicts(config.cache),
        rates=build_rates(config),
        client_store=build_client_store(config),
        tracing=tracing or build_tracing(
            config.tracing.enabled, config.tracing.otlp_endpoint, config.tracing.service_name, os.environ),
    )
    app[edge.LIVE] = LiveGateway(config, shared, config_path, on_admin_reload, config_signature)
    delay = config.server.admin_wrong_key_max_delay_seconds
    app[admin.WRONG_ADMIN_KEYS] = admin.WrongKeyDelay(first_seconds=min(0.05, delay), cap_seconds=delay)
    app.cleanup_ctx.append(_lifetime)
    for path, choose_dialect in RERANK_ROUTES.items():
        app.router.add_post(path, rerank.rerank_handler(choose_dialect))
    app.router.add_get("/v1/models", rerank.list_models)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/metrics", ops.metrics)
    app.router.add_get("/status", ops.status_page)
    app.router.add_get("/status.json", ops.status_json)
    app.router.add_get("/openapi.json", ops.openapi)
    app.router.add_post("/admin/reload", admin.reload)
    app.router.add_get("/admin/spend", admin.spend)
    app.router.add_post("/admin/clients", admin_clients.create_client)
    app.router.add_get("/admin/clients", admin_clients.list_clients)
    app.router.add_patch("/admin/clients/{name}", admin_clients.change_client)
    app.router.add_delete("/admin/clients/{name}", admin_clients.revoke_client)
    app.router.add_post("/admin/clients/{name}/rotate", admin_clients.rotate_client_key)
    return app


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    live = app[edge.LIVE]
    await live.start()
    shared = live.shared
    for provider in live.config.providers:
        # Every breaker's state from the start; in multi-process mode this also opens the gauge's
        # file now, not on a request that may find no descriptor left to open it with.
        shared.metrics.set_breaker_state(provider=provider, state=shared.health[provider].breaker.state)
    watcher = None
    if live.config_path is not None:
        _reload_on_sighup(live)
        if live.config.server.reload_poll_seconds > 0:
            watcher = asyncio.ensure_future(watch_config_file(live, live.config.server.reload_poll_seconds))
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await live.close()


def _reload_on_sighup(live: LiveGateway) -> None:
    # The loop keeps only weak references to tasks: hold each reload until it is done.
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.ensure_future(_reload_logging_errors(live))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Only the main thread may own signals; a gateway embedded elsewhere reloads by the other paths.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    # `serve` blocked SIGHUP while it started: one that came meanwhile is delivered now, a reload.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


async def _reload_logging_errors(live: LiveGateway) -> None:
    try:
        await live.reload()
    except ConfigError as exc:
        edge.log.error("SIGHUP: config not reloaded; the running config stays: %s", exc)


def build_ledger(config: GatewayConfig) -> Ledger:
    """The spend ledger lives in [budget] url's Redis, else the cache's, shared; else in this process."""
    if not config.ledger_url:
        return MemoryLedger()
    return RedisLedger.from_url(
        config.ledger_url, config.cache.ledger_timeout_ms / 1000,
        reserve_timeout_seconds=config.cache.ledger_reserve_timeout_ms / 1000,
    )


def build_rates(config: GatewayConfig) -> RateLimiter:
    """Client and team rates are counted where the ledger lives: fleet-wide in Redis, else per process."""
    rated = any(limits.requests_per_minute or limits.documents_per_minute
                for limits in [*(c.limits for c in config.clients.values()), *(t.limits for t in config.teams.values())])
    if not config.ledger_url:
        if rated:
            edge.log.warning("no Redis configured: client and team rate limits are counted per process, so "
                             "several workers or replicas let through up to that many times each limit")
        return MemoryRates()
    return RedisRates.from_url(config.ledger_url, config.cache.ledger_timeout_ms / 1000)


def build_client_store(config: GatewayConfig) -> ClientStore:
    """Clients created through the admin API live beside the spend ledger: in its Redis, else this process."""
    if not config.ledger_url:
        return MemoryClientStore()
    return RedisClientStore.from_url(config.ledger_url, config.cache.ledger_timeout_ms / 1000)


def build_verdicts(config: CacheConfig) -> VerdictStore:
    """Canary verdicts are shared where the cache is: one prober per fleet, else one per process."""
    if not config.url:
        return LocalVerdicts()
    return RedisVerdicts.from_url(config.url, config.timeout_ms / 1000)


def build_cache(config: CacheConfig) -> ScoreCache:
    if not config.url:
        return MemoryScoreCache(max_bytes=config.max_bytes, ttl_seconds=config.ttl_seconds, max_entries=config.max_entries)
    return RedisScoreCache.from_url(
        config.url, config.ttl_seconds, config.timeout_ms / 1000, lease_seconds=config.lease_ms / 1000
    )
