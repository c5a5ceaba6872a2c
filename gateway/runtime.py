"""The gateway's live state: what one config builds, swapped whole on reload.

    Shared       lives as long as the process: score cache, spend ledger, provider health, single flight,
                 client rates and requests in flight
    Generation   built from one config: provider clients, router, service, the client book
    LiveGateway  the current generation; reload builds the next and swaps it in

A request holds the generation it started on until it ends, so a reload never changes the
config under a request in flight; a retired generation closes its upstream connections once its
last request is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.budget import Ledger
from gateway.cache import ScoreCache
from gateway.clients import ClientBook, ClientStore, InFlight, MemoryClientStore, MemoryRates, RateLimiter
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracing
from gateway.providers.client import build_clients
from gateway.quality.board import QualityBoard
from gateway.quality.guard import QualityGuard
from gateway.quality.parts import Parts
from gateway.quality.verdict_store import LocalVerdicts, VerdictStore
from gateway.resilience.guarded_call import GuardedCall
from gateway.resilience.health import HealthBoard
from gateway.scoring.flights import Flights
from gateway.scoring.router import Router
from gateway.scoring.service import RerankService
from gateway.secrets import Secrets

FileSignature = tuple[int, ...] | None  # what file_signature gives; None: no such file (or unreadable)

log = logging.getLogger("gateway")


@dataclass
class Shared:
    cache: ScoreCache
    ledger: Ledger
    health: HealthBoard
    metrics: GatewayMetrics
    flights: Flights = field(default_factory=Flights)
    quality_board: QualityBoard = field(default_factory=QualityBoard)  # verdicts and agreement
    verdicts: VerdictStore = field(default_factory=LocalVerdicts)  # canary verdicts, shared through Redis
    cache_stats: CacheStats = field(default_factory=lambda: CacheStats())
    tracing: Tracing = field(default_factory=Tracing.off)  # read at start; a reload keeps it
    rates: RateLimiter = field(default_factory=MemoryRates)  # clients' and teams' per-minute counts
    in_flight: InFlight = field(default_factory=InFlight)  # clients' and teams' requests in flight
    client_store: ClientStore = field(default_factory=MemoryClientStore)  # clients the admin API created

    async def start(self) -> None:
        await self.cache.start()
        await self.ledger.start()
        await self.rates.start()
        await self.client_store.start()

    async def close(self) -> None:
        self.metrics.flush()  # the last moment's counts, into a worker's multiprocess files too
        await self.cache.close()
        await self.ledger.close()
        await self.rates.close()
        await self.client_store.close()
        await self.verdicts.close()
        # Flushes the spans still queued: a blocking export, so off the event loop.
        await asyncio.to_thread(self.tracing.shutdown)


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
        self.secrets = Secrets.resolve(config)
        self.client_book = ClientBook(config, self.secrets, shared.client_store)
        if self.secrets.clients_without_key:
            log.warning("no key for clients %s: their key_env is unset or empty, so they cannot be served",
                        ", ".join(self.secrets.clients_without_key))
        self.clients = build_clients(config, self.secrets)
        calls = GuardedCall(config, shared.ledger, shared.health, shared.metrics, shared.tracing)
        self.parts = Parts(config, self.clients, calls, shared.health, shared.metrics, shared.quality_board,
                           shared.verdicts, shared.health.rng)
        self.quality_guard = QualityGuard(self.parts)
        self.router = Router(self.parts, self.quality_guard)
        self.service = RerankService(config, self.router, shared.cache, shared.flights)
        self.in_flight = 0
        self._stopping_quality: asyncio.Task[None] | None = None
        self._retired = False
        self._closed = False

    async def start(self) -> None:
        for client in self.clients.values():
            await client.start()
        self.quality_guard.start()

    def retire(self) -> asyncio.Task[None] | None:
        self._retired = True
        # Its probes stop now: the next generation probes with the new config.
        self._stopping_quality = asyncio.ensure_future(self.quality_guard.close())
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
        await self.quality_guard.close()  # probes and shadow calls use the clients closed next
        for client in self.clients.values():
            await client.close()


# What a running gateway cannot change in place: its listening socket, its logging, its cache
# and ledger connections, and the watcher's poll. Everything else applies to the next request.
RESTART_KEYS = (
    "server.host", "server.port", "server.log_level", "server.log_format", "server.reload_poll_seconds",
    "server.shutdown_grace_seconds", "server.keepalive_timeout_seconds", "server.header_timeout_seconds", "cache",
    "budget.url",
)


def keys_needing_restart(running: GatewayConfig, loaded: GatewayConfig) -> list[str]:
    """The keys (or whole sections) that differ between two configs but take effect only on restart."""
    changed = []
    for key in RESTART_KEYS:
        section, _, name = key.partition(".")
        old, new = getattr(running, section), getattr(loaded, section)
        if name:
            old, new = getattr(old, name), getattr(new, name)
            if old != new:
                changed.append(key)
        else:
            changed.extend(f"{section}.{field}" for field in type(old).model_fields if getattr(old, field) != getattr(new, field))
    return changed


@dataclass(frozen=True, slots=True)
class Reloaded:
    config: GatewayConfig
    needs_restart: list[str]  # keys that changed in the file but apply only after a restart
    unchanged: bool = False  # the file and the secrets it names were loaded already: nothing rebuilt


class Held:
    """A generation held by one request: a plain context manager, since holding awaits nothing."""

    __slots__ = ("_generation",)

    def __init__(self, generation: Generation) -> None:
        self._generation = generation

    def __enter__(self) -> Generation:
        self._generation.enter()
        return self._generation

    def __exit__(self, *_: object) -> None:
        self._generation.leave()


class LiveGateway:
    def __init__(
        self, config: GatewayConfig, shared: Shared, config_path: str | os.PathLike[str] | None = None,
        on_admin_reload: Callable[[], None] | None = None, loaded_signature: FileSignature = None,
    ) -> None:
        """`loaded_signature`: the file's signature taken before `config` was read from it (`serve`
        takes it so); else it is taken now, and an edit in between would go unseen."""
        self.shared = shared
        self.config_path = Path(config_path) if config_path is not None else None
        # /admin/reload reaches one process of several (the kernel picks the worker): this tells the rest.
        self.on_admin_reload = on_admin_reload or (lambda: None)
        self.current = Generation(config, shared)
        self._reload_lock = asyncio.Lock()
        # What the running generation was loaded from: an edit fires the file watcher and, often,
        # an explicit reload right after; the second finds nothing new and rebuilds nothing.
        if loaded_signature is None and self.config_path is not None:
            loaded_signature = file_signature(self.config_path)
        self.loaded_signature = loaded_signature

    @property
    def config(self) -> GatewayConfig:
        return self.current.config

    async def start(self) -> None:
        await self.shared.start()
        await self.current.start()

    def serving(self) -> Held:
        """The current generation, held until the request ends (`with live.serving() as generation`)."""
        return Held(self.current)

    async def reload(self) -> Reloaded:
        """Load the config file again and serve new requests from it.

        Every key applies to new requests, calls and breaker outcomes, except RESTART_KEYS,
        which the answer names when they changed. Raises ConfigError (the running config
        stays) when the file is unreadable or invalid.
        """
        if self.config_path is None:
            raise FileNotFoundError("this gateway was started without a config file")
        async with self._reload_lock:
            signature = file_signature(self.config_path)  # before reading: an edit while we read is seen next time
            config = load_config(self.config_path)
            if signature is not None and signature == self.loaded_signature and Secrets.resolve(config) == self.current.secrets:
                log.info("config reload: %s is the one already loaded; nothing to do", self.config_path)
                return Reloaded(self.config, [], unchanged=True)
            needs_restart = keys_needing_restart(self.config, config)
            nxt = Generation(config, self.shared)
            await nxt.start()
            self.shared.health.apply(config.resilience)
            previous, self.current = self.current, nxt
            self.loaded_signature = signature
            previous.retire()
            if needs_restart:
                log.warning("config reloaded from %s; these changes take effect on restart: %s",
                            self.config_path, ", ".join(needs_restart))
            else:
                log.info("config reloaded from %s", self.config_path)
            return Reloaded(config, needs_restart)

    async def close(self) -> None:
        await self.current.close()
        await self.shared.close()


def file_signature(path: Path) -> FileSignature:
    """What changes when the file at `path` does, however it was written.

    stat() follows the path, so a file an editor or `sed -i` renamed over the old one is the one
    seen; its inode differs even when a copy kept the old size and modification time.
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size


async def watch_config_file(live: LiveGateway, interval_seconds: float) -> None:
    """Reload whenever the config file changes on disk; an invalid file is logged and skipped."""
    assert live.config_path is not None
    seen = file_signature(live.config_path)
    while True:
        await asyncio.sleep(interval_seconds)
        current = file_signature(live.config_path)
        if current is None or current == seen:
            continue
        seen = current
        if current == live.loaded_signature:
            continue  # an explicit reload got there first
        try:
            await live.reload()
        except ConfigError as exc:
            log.error("config file changed but was not loaded; the running config stays: %s", exc)
