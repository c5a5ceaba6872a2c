"""Gateway processes and a real redis-server killed under them: what the spend ledger keeps.

Two scenarios, shared by tests/test_budget_processes.py (which asserts) and
bench/ledger_outage.py (which prints them for this tree and for an older checkout):

- `refused_replicas_through_an_outage`: one replica spends the budget, another is only ever
  refused; Redis is killed, and both take misses. What they spend during the outage is compared
  with what remained at the last ledger reply each saw.
- `write_back_through_an_outage`: a persistent (appendonly) Redis holds cache and ledger; it is
  killed for a few seconds under a load of misses through two replicas, and restarted. The
  ledger's tokens afterwards are compared with the tokens the emulator billed.
- `ledger_stalled_under_load`: the same load, the ledger in a Redis of its own that is SIGSTOPped
  (hung, not gone) for a few seconds: what that costs requests, and what reaches the ledger.

The emulator always runs from this tree (its stats count billed tokens); the gateways run from
`tree`, so an older checkout can be measured the same way.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import redis
from redis.crc import key_slot

from tests.support.config import gateway_config, local_url, write_config
from tests.support.processes import REPO, free_port, running
from tests.support.redis_server import RedisServer

if TYPE_CHECKING:  # imported by pytest as a plugin, so that its asserts are rewritten
    from tests.support.redis_cluster import RedisCluster

DEEPINFRA = "/v1/inference/Qwen/Qwen3-Reranker-8B"
ADMIN = {"Authorization": "Bearer admin"}
PERSISTENT = ["--appendonly", "yes"]
ANSWER_TIMEOUT = aiohttp.ClientTimeout(total=20)


def body(i: int) -> dict[str, Any]:
    return {"queries": [f"question {i} about fees"], "documents": [f"passage {i}-{d} on the fees of the MFC" for d in range(5)]}


@contextmanager
def gateways(
    tree: Path, workdir: Path, redis_url: str, count: int, sections: Mapping[str, Any] | None = None,
    emulator_latency_ms: float = 20, processes: list[subprocess.Popen] | None = None,
) -> Iterator[tuple[int, list[int]]]:
    """The emulator (from this tree) and `count` single-worker gateways (from `tree`) on one Redis;
    `sections` merged into their config (see `gateway_config`); `processes` receives the gateways'."""
    emulator_port, ports = free_port(), [free_port() for _ in range(count)]
    config = workdir / "config.toml"
    # Warnings only: nobody reads the processes' stderr pipe while they run, and a request log
    # line per answer would fill it and stall the gateway.
    server = {"admin_key_env": "ADMIN_KEY", "log_level": "warning"}
    write_config(config, gateway_config(local_url(emulator_port), ["deepinfra"], server=server, **(sections or {})))
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url, "ADMIN_KEY": "admin", "PYTHONPATH": str(tree)}
    with ExitStack() as stack:
        stack.enter_context(running(["emulate", "--port", str(emulator_port), "--latency-ms", str(emulator_latency_ms)],
                                    emulator_port))
        for port in ports:
            process = stack.enter_context(running(["serve", "--config", str(config), "--port", str(port),
                                                   "--workers", "1"], port, env=env, cwd=tree))
            if processes is not None:
                processes.append(process)
        yield emulator_port, ports


async def admin_spend(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/admin/spend", headers=ADMIN) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def settled_everywhere(session: aiohttp.ClientSession, ports: list[int], seconds: float = 30) -> None:
    """Until every gateway reads the shared ledger with nothing pending (a tree without that report: at once)."""
    deadline = time.monotonic() + seconds
    while True:
        states = [(await admin_spend(session, port)).get("ledger") for port in ports]
        if all(state is None or (state["figures"] == "shared" and state["pending_tokens"] == 0) for state in states):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ledger did not settle: {states}")
        await asyncio.sleep(0.1)


def ledger_tokens(server: RedisServer, provider: str = "deepinfra") -> tuple[int, int]:
    """(tokens, nano-dollars) in the ledger's day windows for `provider`, over every day stored."""
    with server.client() as client:
        return _day_tokens(client, provider)


def _day_tokens(client: redis.Redis, provider: str = "deepinfra") -> tuple[int, int]:
    keys = list(client.scan_iter(match=f"rb:{{budget}}:t:????-??-??:{provider}"))
    figures = [client.hmget(key, "tokens", "spent") for key in keys]
    return sum(int(t or 0) for t, _ in figures), sum(int(s or 0) for _, s in figures)


async def emulator_tokens(session: aiohttp.ClientSession, port: int, provider: str = "deepinfra") -> int:
    async with session.get(f"http://127.0.0.1:{port}/_emulator/stats") as response:
        return int((await response.json())["tokens"][provider])


# --- refused replicas -------------------------------------------------------------------------


@dataclass
class RefusedOutage:
    budget_usd: float
    spent_before_usd: float  # the shared figure when Redis was killed (what each replica last saw)
    most_per_call_usd: float
    outage_costs: dict[str, list[float]] = field(default_factory=dict)  # replica -> each answered call's cost

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.budget_usd - self.spent_before_usd)

    @property
    def outage_spend_usd(self) -> float:
        return sum(sum(costs) for costs in self.outage_costs.values())

    def summary(self) -> str:
        calls = {replica: len(costs) for replica, costs in self.outage_costs.items()}
        return (
            f"budget ${self.budget_usd:.6g}; spent ${self.spent_before_usd:.6g} when Redis was killed, "
            f"${self.remaining_usd:.6g} remained; during the outage the replicas made {calls} calls for "
            f"${self.outage_spend_usd:.6g} = {self.outage_spend_usd / self.budget_usd:.2f}x the budget "
            f"(bound 2 x remaining = ${2 * self.remaining_usd:.6g}, plus an estimate's error per replica; "
            f"one call ~${self.most_per_call_usd:.3g})"
        )


async def refused_replicas_through_an_outage(
    workdir: Path, tree: Path = REPO, budget_usd: float = 0.0001, tries: int = 40
) -> RefusedOutage:
    server = RedisServer(workdir)
    server.start()
    budget = {"providers": {"deepinfra": {"budget": {"daily_usd": budget_usd}}}}
    counter = itertools.count()
    try:
        with gateways(tree, workdir, server.url, 2, budget) as (_, (spender, refused)):
            async with aiohttp.ClientSession() as session:

                async def post(port: int) -> tuple[int, float]:
                    async with session.post(f"http://127.0.0.1:{port}{DEEPINFRA}", json=body(next(counter))) as answer:
                        status = answer.status
                        payload = await answer.json()
                    return status, payload["inference_status"]["cost"] if status == 200 else 0.0

                costs: list[float] = []
                while (outcome := await post(spender))[0] == 200 and len(costs) < 10_000:
                    costs.append(outcome[1])
                assert outcome[0] == 429, outcome
                for _ in range(3):
                    assert (await post(refused))[0] == 429  # this replica is only ever refused
                spent = (await admin_spend(session, refused))["providers"]["deepinfra"]["today"]["usd"]
                figures = RefusedOutage(budget_usd, spent, max(costs))
                server.stop()  # SIGKILL
                replicas = {"spender": spender, "refused": refused}
                figures.outage_costs = {name: [] for name in replicas}
                for _ in range(tries):
                    for name, port in replicas.items():
                        status, cost = await post(port)
                        assert status in (200, 429), status
                        if status == 200:
                            figures.outage_costs[name].append(cost)
                return figures
    finally:
        server.stop()


# --- write-back ---------------------------------------------------------------------------------


@dataclass
class WriteBackOutage:
    outage_seconds: float
    fault: str = "Redis killed"
    answered: int = 0
    failed: int = 0
    unanswered: int = 0  # no answer within ANSWER_TIMEOUT
    answered_tokens: int = 0  # the usage in the gateways' answers
    emulator_tokens: int = 0
    ledger_tokens: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # "status body" of each answer not 200

    @property
    def kept(self) -> float:
        return self.ledger_tokens / self.emulator_tokens if self.emulator_tokens else 0.0

    def summary(self) -> str:
        return (
            f"{self.fault} for {self.outage_seconds:.1f}s under load: {self.answered} answers ({self.failed} not 200, "
            f"{self.unanswered} unanswered); "
            f"the emulator billed {self.emulator_tokens} tokens (answers' usage: {self.answered_tokens}), "
            f"the ledger holds {self.ledger_tokens} = {self.kept:.1%}"
            + (f"; not 200: {dict(self.failures.most_common(3))}" if self.failures else "")
        )


async def write_back_through_an_outage(
    workdir: Path, tree: Path = REPO, outage_seconds: float = 4.0, concurrency: int = 16, before_seconds: float = 1.5,
    after_seconds: float = 2.0,
) -> WriteBackOutage:
    server = RedisServer(workdir, extra_args=PERSISTENT)
    server.start()
    try:
        figures = WriteBackOutage(outage_seconds)
        await _load_through(figures, server.url, None, workdir, tree, functools.partial(_killed_for, server, outage_seconds),
                            concurrency, before_seconds, after_seconds)
        figures.ledger_tokens = ledger_tokens(server)[0]
        return figures
    finally:
        server.stop()


async def ledger_stalled_under_load(
    workdir: Path, tree: Path = REPO, stall_seconds: float = 3.0, concurrency: int = 8, before_seconds: float = 1.5,
    after_seconds: float = 2.0,
) -> WriteBackOutage:
    """The ledger's own Redis SIGSTOPped (hung: connections open, no answer) under a load of misses,
    then SIGCONTinued; the cache's Redis stays up."""
    cache, ledger = RedisServer(workdir / "cache"), RedisServer(workdir / "ledger", extra_args=PERSISTENT)
    for server in (cache, ledger):
        server.workdir.mkdir(exist_ok=True)
        server.start()
    try:
        figures = WriteBackOutage(stall_seconds, "the ledger's Redis SIGSTOPped")
        assert ledger.process is not None
        await _load_through(figures, cache.url, ledger.url, workdir, tree,
                            functools.partial(_stopped_for, ledger.process, stall_seconds),
                            concurrency, before_seconds, after_seconds)
        figures.ledger_tokens = ledger_tokens(ledger)[0]
        return figures
    finally:
        for server in (cache, ledger):
            server.stop()


async def _killed_for(server: RedisServer, seconds: float) -> None:
    server.stop()  # SIGKILL, under load
    await asyncio.sleep(seconds)
    await asyncio.to_thread(server.start)


async def ledger_stalled_on_a_cluster(
    workdir: Path, cluster: RedisCluster, tree: Path = REPO, stall_seconds: float = 1.5, concurrency: int = 8,
    before_seconds: float = 1.5, after_seconds: float = 2.0,
) -> WriteBackOutage:
    """ledger_stalled_under_load with cache and ledger on a Cluster, its `{budget}` master SIGSTOPped
    (for less than `cluster-node-timeout`: hung, not failed over)."""
    master = _budget_master(cluster)
    process = cluster.processes[[port for port, _ in cluster.ports].index(master)]
    figures = WriteBackOutage(stall_seconds, "the cluster's {budget} master SIGSTOPped")
    await _load_through(figures, cluster.url, None, workdir, tree, functools.partial(_stopped_for, process, stall_seconds),
                        concurrency, before_seconds, after_seconds)
    with redis.Redis(port=master) as node:
        figures.ledger_tokens = _day_tokens(node)[0]
    return figures


def _budget_master(cluster: RedisCluster) -> int:
    slot = key_slot(b"{budget}")
    with redis.Redis(port=cluster.ports[0][0]) as node:
        for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
    raise LookupError("no master owns the {budget} slot")


async def _stopped_for(process: subprocess.Popen, seconds: float) -> None:
    process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        process.send_signal(signal.SIGCONT)


async def _load_through(
    figures: WriteBackOutage, cache_url: str, ledger_url: str | None, workdir: Path, tree: Path,
    fault: Callable[[], Awaitable[None]], concurrency: int, before_seconds: float, after_seconds: float,
) -> None:
    """Misses from `concurrency` clients through two replicas, `fault` done to Redis under them,
    into `figures`, with what the emulator billed; the ledger is the cache's unless `ledger_url`."""
    # A budget far above what the run spends: every call reserves and settles through the ledger.
    budget: dict[str, Any] = {"providers": {"deepinfra": {"budget": {"daily_usd": 1000.0}}}}
    if ledger_url is not None:
        budget["budget"] = {"url": ledger_url}
    counter = itertools.count()
    stop = asyncio.Event()
    with gateways(tree, workdir, cache_url, 2, budget) as (emulator_port, ports):
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def client(worker: int) -> None:
                port = ports[worker % len(ports)]
                while not stop.is_set():
                    try:
                        async with session.post(f"http://127.0.0.1:{port}{DEEPINFRA}", json=body(next(counter)),
                                                timeout=ANSWER_TIMEOUT) as answer:
                            if answer.status != 200:
                                figures.failed += 1
                                figures.failures[f"{answer.status} {(await answer.text())[:160]}"] += 1
                                continue
                            figures.answered += 1
                            figures.answered_tokens += (await answer.json())["input_tokens"]
                    except TimeoutError:
                        figures.unanswered += 1

            load = asyncio.gather(*(client(worker) for worker in range(concurrency)))
            await asyncio.sleep(before_seconds)
            await fault()
            await asyncio.sleep(after_seconds)
            stop.set()
            await load
            await settled_everywhere(session, ports)
            figures.emulator_tokens = await emulator_tokens(session, emulator_port)
    # The gateways are stopped now (a stopping one writes back what it still held): the caller reads the ledger.


# --- a worker killed mid-call ---------------------------------------------------------------------


@dataclass
class KilledMidCall:
    in_flight: int  # calls the killed gateway had upstream when it died
    emulator_tokens: int = 0
    ledger_tokens: int = 0
    ledger_estimated_tokens: int = 0  # of ledger_tokens: the dead gateway's holds, charged when found expired

    def summary(self) -> str:
        return (
            f"a gateway SIGKILLed with {self.in_flight} calls upstream: the emulator billed {self.emulator_tokens} tokens, "
            f"the ledger holds {self.ledger_tokens} ({self.ledger_estimated_tokens} of them estimated, from the dead "
            f"gateway's expired holds) = {self.ledger_tokens / max(1, self.emulator_tokens):.1%}"
        )


async def killed_mid_call(workdir: Path, tree: Path = REPO, in_flight: int = 4) -> KilledMidCall:
    """Two gateways on one Redis with budgets enforced; one is SIGKILLed while `in_flight` of its
    calls hang upstream (which the emulator then answers, and bills). Once their holds expire (30 s
    after the calls' deadlines), a call through the other gateway finds them."""
    server = RedisServer(workdir)
    server.start()
    # Same-sized bodies, so the token estimate learned from the first answers is exact for the rest.
    same_size = [body(100_000 + i) for i in range(64)]
    sections = {"providers": {"deepinfra": {"budget": {"daily_usd": 1000.0}}},
                "resilience": {"attempt_min_ms": 5000}}  # the hung calls are still in their attempt when killed
    figures = KilledMidCall(in_flight)
    processes: list[subprocess.Popen] = []
    try:
        with gateways(tree, workdir, server.url, 2, sections, processes=processes) as (emulator_port, (victim, survivor)):
            async with aiohttp.ClientSession(timeout=ANSWER_TIMEOUT) as session:
                base = f"http://127.0.0.1:{{}}{DEEPINFRA}"
                for i in range(4):
                    async with session.post(base.format(victim), json=same_size[i]) as answer:
                        assert answer.status == 200, await answer.text()
                fault = {"provider": "deepinfra", "mode": "slow", "delay_ms": 2000, "count": in_flight}
                async with session.post(f"http://127.0.0.1:{emulator_port}/_emulator/faults", json=fault) as answer:
                    assert answer.status == 200
                before = await _emulator_requests(session, emulator_port)
                hung = [asyncio.ensure_future(session.post(base.format(victim), json=same_size[4 + i]))
                        for i in range(in_flight)]
                while await _emulator_requests(session, emulator_port) < before + in_flight:
                    await asyncio.sleep(0.02)
                processes[0].send_signal(signal.SIGKILL)
                await asyncio.gather(*hung, return_exceptions=True)
                await asyncio.sleep(_HOLD_SECONDS_AT_MOST)
                async with session.post(base.format(survivor), json=same_size[-1]) as answer:
                    assert answer.status == 200, await answer.text()  # its reserve finds the holds expired
                await settled_everywhere(session, [survivor])
                figures.emulator_tokens = await emulator_tokens(session, emulator_port)
        with server.client() as client:
            keys = list(client.scan_iter(match="rb:{budget}:t:????-??-??:deepinfra"))
            for key in keys:
                tokens, estimated = client.hmget(key, "tokens", "est_tokens")
                figures.ledger_tokens += int(tokens or 0)
                figures.ledger_estimated_tokens += int(estimated or 0)
        return figures
    finally:
        server.stop()


# A hold outlives its call's attempt (at most attempt_min_ms here) by 30 s (gateway/resilience/guarded_call.py).
_HOLD_SECONDS_AT_MOST = 30 + 5 + 1


async def _emulator_requests(session: aiohttp.ClientSession, port: int) -> int:
    async with session.get(f"http://127.0.0.1:{port}/_emulator/stats") as response:
        return int((await response.json())["requests"]["deepinfra"])

