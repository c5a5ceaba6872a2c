"""The gateway's live state: what one config builds, swapped whole on reload.

    Shared       lives as long as the process: score cache, spend ledger, provider health, single flight
    Generation   built from one config: provider clients, router, service
    LiveGateway  the current generation; reload builds the next and swaps it in

A request holds the generation it started on until it ends, so a reload never changes the
config under a request in flight; a retired generation closes its upstream sessions once its
last request is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.budget import Ledger
from gateway.cache import ScoreCache
from gateway.guard import GuardedCall
from gateway.health import HealthBoard
from gateway.observability.metrics import GatewayMetrics
from gateway.config import GatewayConfig, load_config
from gateway.flights import Flights
from gateway.providers.client import ProviderClient
from gateway.router import Router
from gateway.service import RerankService

log = logging.getLogger("gateway")


@dataclass
class Shared:
    cache: ScoreCache
    ledger: Ledger
    health: HealthBoard
    metrics: GatewayMetrics
    flights: Flights = field(default_factory=Flights)
    cache_stats: CacheStats = field(default_factory=lambda: CacheStats())

    async def start(self) -> None:
        await self.cache.start()
        await self.ledger.start()

    async def close(self) -> None:
        await self.cache.close()
        await self.ledger.close()


@dataclass
class CacheStats:
    """Pairs served from the cache and sent upstream since start, and what upstream pairs cost."""

    hits: int = 0
    misses: int = 0
    upstream_usd: float = 0.0

    def add(self, hits: int, misses: int, upstream_usd: float) -> None:
        self.hits += hits
        self.misses += misses
        self.upstream_usd += upstream_usd

    @property
    def saved_usd(self) -> float:
        """What the hits would have cost at the average price of a pair sent upstream."""
        return self.hits * self.upstream_usd / self.misses if self.misses else 0.0


class Generation:
    def __init__(self, config: GatewayConfig, shared: Shared) -> None:
        self.config = config
        self.loaded_at = time.time()
        self.client_keys = [key.encode() for key in config.server.client_keys()]
        self.clients = {name: ProviderClient(name, provider) for name, provider in config.providers.items()}
        guard = GuardedCall(config, shared.ledger, shared.health, shared.metrics)
        self.router = Router(config, self.clients, guard, shared.health, shared.metrics)
        self.service = RerankService(config, self.router, shared.cache, shared.flights)
        self.in_flight = 0
        self._retired = False
        self._closed = False

    async def start(self) -> None:
        for client in self.clients.values():
            await client.start()

    def retire(self) -> asyncio.Task[None] | None:
        self._retired = True
        return self._close_if_idle()

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        self._close_if_idle()

    def _close_if_idle(self) -> asyncio.Task[None] | None:
        if self._retired and self.in_flight == 0 and not self._closed:
            self._closed = True
            return asyncio.ensure_future(self.close())
        return None

    async def close(self) -> None:
        self._closed = True
        for client in self.clients.values():
            await client.close()


class LiveGateway:
    def __init__(self, config: GatewayConfig, shared: Shared, config_path: str | os.PathLike[str] | None = None) -> None:
        self.shared = shared
        self.config_path = Path(config_path) if config_path is not None else None
        self.current = Generation(config, shared)
        self._reload_lock = asyncio.Lock()

    @property
    def config(self) -> GatewayConfig:
        return self.current.config

    async def start(self) -> None:
        await self.shared.start()
        await self.current.start()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Generation]:
        """The current generation, held until the request ends."""
        generation = self.current
        generation.enter()
        try:
            yield generation
        finally:
            generation.leave()

    async def reload(self) -> GatewayConfig:
        """Load the config file again and serve new requests from it.

        Raises ConfigError (the running config stays) when the file is unreadable or invalid.
        """
        if self.config_path is None:
            raise FileNotFoundError("this gateway was started without a config file")
        async with self._reload_lock:
            config = load_config(self.config_path)
            if config.cache != self.config.cache:
                log.warning("config reload: [cache] changes take effect on restart; the running cache stays")
            nxt = Generation(config, self.shared)
            await nxt.start()
            previous, self.current = self.current, nxt
            previous.retire()
            log.info("config reloaded from %s", self.config_path)
            return config

    async def close(self) -> None:
        await self.current.close()
        await self.shared.close()


def file_signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def watch_config_file(live: LiveGateway, interval_seconds: float) -> None:
    """Reload whenever the config file changes on disk; an invalid file is logged and skipped."""
    from gateway.config import ConfigError

    assert live.config_path is not None
    seen = file_signature(live.config_path)
    while True:
        await asyncio.sleep(interval_seconds)
        current = file_signature(live.config_path)
        if current is None or current == seen:
            continue
        seen = current
        try:
            await live.reload()
        except ConfigError as exc:
            log.error("config file changed but was not loaded; the running config stays: %s", exc)
