"""create_app(config): the only place that wires the gateway together."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway import http
from gateway.cache import MemoryScoreCache, ScoreCache
from gateway.cache.redis import RedisScoreCache
from gateway.config import CacheConfig, GatewayConfig
from gateway.dialects import RERANK_ROUTES
from gateway.providers.client import ProviderClient
from gateway.router import Router
from gateway.service import RerankService


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[http.error_middleware],
    )
    app[http.CONFIG] = config
    app.cleanup_ctx.append(_service_lifetime)
    for path, choose_dialect in RERANK_ROUTES.items():
        app.router.add_post(path, http.rerank_handler(choose_dialect))
    app.router.add_get("/v1/models", http.list_models)
    app.router.add_get("/healthz", http.healthz)
    return app


async def _service_lifetime(app: web.Application) -> AsyncIterator[None]:
    config = app[http.CONFIG]
    clients = {name: ProviderClient(name, provider) for name, provider in config.providers.items()}
    for client in clients.values():
        await client.start()
    cache = build_cache(config.cache)
    app[http.SERVICE] = RerankService(config, Router(config, clients), cache)
    try:
        yield
    finally:
        for client in clients.values():
            await client.close()
        await cache.close()


def build_cache(config: CacheConfig) -> ScoreCache:
    if not config.url:
        return MemoryScoreCache(max_entries=config.max_entries, ttl_seconds=config.ttl_seconds)
    return RedisScoreCache.from_url(config.url, config.ttl_seconds, config.timeout_ms / 1000)
