"""What every benchmark here needs: its own servers, CPU accounting, a load generator, tables.

Servers run as separate processes on free loopback ports, started inside a `ProcessGroup`
that stops them whatever happens (and a child dies with the bench even if it is SIGKILLed).
CPU time comes from /proc, so no psutil. Nothing here asserts: the machines are shared and
noisy, so the benchmarks print ratios measured within one run.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent

UPSTREAM_MODEL = "Qwen/Qwen3-Reranker-8B"
GATEWAY_MODEL = "qwen3-reranker-8b"
PATH = f"/v1/inference/{UPSTREAM_MODEL}"
PRICE_PER_MILLION_TOKENS = 0.05  # DeepInfra's Qwen3-Reranker-8B price, as configured below
BENCH_KEY_ENV, BENCH_KEY = "BENCH_KEY", "bench"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
READY_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 10.0
CELL_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


# --- processes --------------------------------------------------------------------------



def _stat_fields(pid: int) -> list[bytes]:
    """/proc/<pid>/stat from field 3 (state) on: index i is field i + 3 of proc(5)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        # comm (field 2) may hold spaces or parentheses: split after its closing one
        return stat.read().rsplit(b")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included, from /proc (no psutil needed)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_ticks(pid: int) -> int:
    """When the process started (clock ticks after boot): with the pid, names one process for good."""
    return int(_stat_fields(pid)[19])


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (ppid, field 4 of /proc/<pid>/stat)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry))[1]) == pid:
                children.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return sorted(children)


class CpuMeter(Protocol):
    """Anything `measure_cell` can count CPU seconds of: a server, one process, the machine."""

    @property
    def name(self) -> str: ...

    def cpu_seconds(self) -> float: ...


@dataclass(frozen=True)
class ProcessCpu:
    """One process that is not ours to start (a gateway worker), named by pid and start time."""

    name: str
    pid: int
    started: int

    @staticmethod
    def of(name: str, pid: int) -> ProcessCpu:
        return ProcessCpu(name, pid, start_ticks(pid))

    def alive(self) -> bool:
        try:
            return start_ticks(self.pid) == self.started
        except (OSError, IndexError, ValueError):
            return False

    def cpu_seconds(self) -> float:
        try:
            fields = _stat_fields(self.pid)
        except OSError:
            fields = []
        if len(fields) < 20 or int(fields[19]) != self.started:
            # A replaced worker's CPU would be counted from zero: the cell would be wrong.
            raise RuntimeError(f"{self.name} (pid {self.pid}) is gone: the supervisor replaced a worker")
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class MachineCpu:
    """CPU seconds of the whole machine from /proc/stat, summed over its CPUs, whoever spent them.

    `busy`: user + nice + system + irq + softirq; `steal`: time the hypervisor gave to others.
    On a shared machine, busy minus what our processes spent is the other jobs' load.
    """

    name: str
    part: str = "busy"

    def cpu_seconds(self) -> float:
        with open("/proc/stat", "rb") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
        used = steal if self.part == "steal" else user + nice + system + irq + softirq
        return used / CLOCK_TICKS


def machine_cpus() -> int:
    with open("/proc/stat", "rb") as stat:
        return sum(1 for line in stat if line[:3] == b"cpu" and line[3:4].isdigit())


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of loopback TCP sockets with local `port` in `state` ("0A" listen, "01" established)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                        inodes.add(int(fields[9]))
        except FileNotFoundError:
            continue
    return inodes


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds open."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    # `serve --workers N` (N > 1): the supervisor only starts the workers, which serve; once
    # ready, `workers` holds them and CPU time is theirs, summed (the supervisor's is not counted).
    expected_workers: int = 0
    workers: list[ProcessCpu] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = PATH) -> str:
        return self.base_url + path

    def cpu_seconds(self) -> float:
        if self.workers:
            return sum(worker.cpu_seconds() for worker in self.workers)
        return cpu_seconds(self.proc.pid)

    def connections_per_worker(self) -> list[int]:
        """Established client connections each worker holds (SO_REUSEPORT picks a worker per
        connection; a keep-alive connection stays with it)."""
        established = tcp_sockets(self.port, "01")
        return [len(established & socket_inodes(worker.pid)) for worker in self.workers]

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def log_lines(self, containing: str) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if containing in line]


def _child_setup(cores: set[int] | None) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        # Die with the bench even if it is SIGKILLed, so no server outlives a run.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if cores:
            os.sched_setaffinity(0, cores)  # before exec: no thread of the server escapes the pin
    return setup


def server_env(checkout: Path = REPO) -> dict[str, str]:
    # REDIS_URL would override the cache the bench configured; GATEWAY_CONFIG the config.
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GATEWAY_CONFIG")}
    env[BENCH_KEY_ENV] = BENCH_KEY
    # The checkout under test first; a PYTHONPATH of the caller's after it (a probe's sitecustomize).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
    return env


class ProcessGroup:
    """The servers of one benchmark run: each started on a free port, all stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []
        self._env = server_env()
        self._ports: set[int] = set()

    def free_port(self) -> int:
        """A loopback port nothing listens on, never one this group handed out before: the kernel
        may offer a probed port again at once, and a server would then fail to bind."""
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port: int = probe.getsockname()[1]
            if port not in self._ports:
                self._ports.add(port)
                return port

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], port: int, cores: set[int] | None,
              workers: int = 0, checkout: Path = REPO) -> Server:
        """Start a server without waiting for it: several start in parallel, then `wait_ready`.

        `workers`: the server is a supervisor whose that many child processes serve the port.
        `checkout`: the source tree it runs from (another commit's, for a before/after in one run).
        """
        log = self.workdir / f"{name}.log"
        env = self._env if checkout == REPO else server_env(checkout)
        with open(log, "wb") as out:
            proc = subprocess.Popen(list(argv), cwd=checkout, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=_child_setup(cores))
        server = Server(name, port, proc, log, expected_workers=workers)
        self.servers.append(server)
        return server

    def wait_ready(self) -> None:
        for server in self.servers:
            _wait_listening(server)

    def stop_all(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                server.proc.terminate()
        for server in self.servers:
            try:
                server.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
            # Workers have no death signal of their own: a supervisor killed before it stopped
            # them would leave them running.
            for worker in server.workers:
                if worker.alive():
                    os.kill(worker.pid, signal.SIGKILL)
        self.servers.clear()


def _wait_listening(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        if server.expected_workers:
            if _workers_listening(server):
                return
            time.sleep(0.1)
            continue
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} not listening after {READY_TIMEOUT_S:g}s:\n{server.log_tail()}")


def _workers_listening(server: Server) -> bool:
    """Whether each of the supervisor's workers has its own socket listening on the port.

    Not just "the port answers": the kernel spreads connections only over the sockets
    listening when they arrive, so a client that connected while one worker was still
    starting would keep all its keep-alive connections on the others.
    """
    pids = child_pids(server.proc.pid)
    listening = tcp_sockets(server.port, "0A")
    if len(pids) != server.expected_workers or not all(socket_inodes(pid) & listening for pid in pids):
        return False
    server.workers = [ProcessCpu.of(f"{server.name}-worker-{i}", pid) for i, pid in enumerate(pids, 1)]
    return True


def start_emulator(group: ProcessGroup, cores: set[int] | None, latency_ms: float,
                   jitter_ms: float = 0.0, name: str = "emulator") -> Server:
    port = group.free_port()
    return group.start(name, [sys.executable, "-m", "gateway", "emulate", "--port", str(port),
                              "--latency-ms", f"{latency_ms:g}", "--jitter-ms", f"{jitter_ms:g}"],
                       port, cores)


def start_passthrough(group: ProcessGroup, cores: set[int] | None, upstream: Server) -> Server:
    port = group.free_port()
    return group.start("passthrough", [sys.executable, "-m", "bench.passthrough",
                                       "--port", str(port), "--upstream", upstream.base_url],
                       port, cores)


def start_gateway(group: ProcessGroup, cores: set[int] | None, upstream: Server, cache_url: str = "",
                  cache_timeout_ms: float | None = None, name: str = "gateway", workers: int = 1,
                  config: Path | None = None, checkout: Path = REPO) -> Server:
    """The gateway as `serve --workers N`, run from `checkout` (this one by default).

    Always explicit: without `--workers`, a gateway with a Redis cache starts one worker per
    core under a supervisor, and the benches measure one process unless told otherwise. With
    N > 1 the server's CPU is its workers', summed. `config` reuses a file written by
    `write_gateway_config` (then `cache_url` and `cache_timeout_ms` are ignored), so several
    gateways run on exactly one config.
    """
    port = group.free_port()
    if config is None:
        config = write_gateway_config(group.workdir / f"{name}.toml", upstream.port, cache_url, cache_timeout_ms)
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port),
            "--workers", str(workers)]
    return group.start(name, argv, port, cores, workers=workers if workers > 1 else 0, checkout=checkout)


def start_redis(group: ProcessGroup, cores: set[int] | None, name: str = "redis") -> Server:
    """A private redis-server on a free port: never the machine's own Redis on 6379."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    port = group.free_port()
    workdir = group.workdir / name
    workdir.mkdir(exist_ok=True)
    # No snapshots and no AOF: persistence would add fork and disk work to the numbers.
    return group.start(name, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(workdir)], port, cores)


def start_redis_cluster(group: ProcessGroup, masters: int = 3) -> str:
    """A private cluster of `masters` nodes (no replicas) on free ports, formed; its `redis+cluster://` URL."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server and redis-cli not found (apt-get install redis-server redis-tools)")
    nodes = []
    for number in range(masters):
        port, bus = group.free_port(), group.free_port()  # the bus port given: port + 10000 may not exist
        workdir = group.workdir / f"cluster-{number}"
        workdir.mkdir(exist_ok=True)
        nodes.append(group.start(f"cluster-{number}", [
            binary, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", str(workdir / "nodes.conf"), "--save", "", "--appendonly", "no",
            "--dir", str(workdir)], port, None))
    group.wait_ready()
    addresses = [f"127.0.0.1:{node.port}" for node in nodes]
    subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, capture_output=True, timeout=READY_TIMEOUT_S)
    deadline = time.monotonic() + READY_TIMEOUT_S
    for node in nodes:  # every node must see the slots assigned before a client maps them
        while b"cluster_state:ok" not in subprocess.run([cli, "-p", str(node.port), "cluster", "info"],
                                                        capture_output=True, check=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name}: the cluster did not form in {READY_TIMEOUT_S:g}s")
            time.sleep(0.1)
    return "redis+cluster://" + ",".join(addresses)


def redis_url(redis: Server) -> str:
    return f"redis://127.0.0.1:{redis.port}/0"


def write_gateway_config(path: Path, emulator_port: int, cache_url: str = "",
                         cache_timeout_ms: float | None = None) -> Path:
    # Only what differs from the defaults: one model, one provider (the emulator), the cache.
    timeout = "" if cache_timeout_ms is None else f"timeout_ms = {cache_timeout_ms:g}\n"
    path.write_text(f"""\
[server]
host = "127.0.0.1"
default_model = "{GATEWAY_MODEL}"

[cache]
url = "{cache_url}"
{timeout}
[models."{GATEWAY_MODEL}"]
aliases = ["{UPSTREAM_MODEL}"]
fallback = ["deepinfra"]
quality = {{ probe_interval_seconds = 0 }}  # canary calls would count as paid pairs and CPU

[providers.deepinfra]
kind = "deepinfra"
base_url = "http://127.0.0.1:{emulator_port}"
model = "{UPSTREAM_MODEL}"
api_key_env = "{BENCH_KEY_ENV}"
price_per_million_tokens = {PRICE_PER_MILLION_TOKENS}
""")
    return path


def cache_warnings_note(gateway: Server) -> list[str]:
    """The gateway's Redis failure warnings, quoted; each stands for a spell of uncached answers."""
    warnings = gateway.log_lines("gateway.cache")
    if not warnings:
        return []
    return [f"{gateway.name} logged {len(warnings)} Redis failure warning(s) (at most one per 30 s; each failed "
            "call is answered uncached, and three in a row make it skip Redis for 1 s):",
            *(f"    {line}" for line in warnings[:5])]


def exit_on_sigterm() -> None:
    """A SIGTERM must still unwind through `ProcessGroup.__exit__`, or servers would outlive us."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# --- pinning ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Pinning:
    proxy: set[int] | None  # the passthrough and the gateway: the processes under test
    emulator: set[int] | None  # also the Redis of the cache benchmark: harness side
    loadgen: set[int] | None
    note: str


def plan_pinning(enabled: bool) -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled:
        return Pinning(None, None, None, f"pinning off; {len(cpus)} CPUs shared by all processes")
    if len(cpus) < 2:
        return Pinning(None, None, None, "pinning skipped: only one CPU available")
    proxy, rest = {cpus[0]}, cpus[1:]
    # The process under test gets a core to itself; the harness shares what is left.
    emulator, loadgen = ({rest[0]}, {rest[1]}) if len(rest) >= 2 else ({rest[0]}, {rest[0]})
    note = (f"pinned: passthrough/gateway on CPU {cpus[0]}; emulator on CPU {min(emulator)}; "
            f"load generator on CPU {min(loadgen)}")
    return Pinning(proxy, emulator, loadgen, note)


def pin_self(pinning: Pinning) -> None:
    if pinning.loadgen:
        os.sched_setaffinity(0, pinning.loadgen)


def settle_in(pin: bool) -> Pinning:
    """What a benchmark that starts servers does first: plan the cores, unwind on SIGTERM, and put
    itself (the load generator) on the cores it was given."""
    pinning = plan_pinning(pin)
    exit_on_sigterm()
    pin_self(pinning)
    return pinning


@contextmanager
def loadgen_cores(cores: set[int] | None) -> Iterator[None]:
    """Run the load generator (this thread: the event loop) on `cores` for a while; None = as is."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --- load -------------------------------------------------------------------------------

def client_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


# Looks at an answer's headers (the body is already read); False counts it as unexpected.
ResponseCheck = Callable[[aiohttp.ClientResponse], bool]


@dataclass
class Tally:
    errors: int = 0  # no answer, or not a 200
    unexpected: int = 0  # a 200 that failed the check


async def drive(session: aiohttp.ClientSession, url: str, bodies: Iterator[bytes], concurrency: int,
                latencies_ms: list[float], headers: Mapping[str, str] = HEADERS,
                check: ResponseCheck | None = None) -> Tally:
    """Send every body with `concurrency` workers; latencies of the 200s go to `latencies_ms`."""
    tally = Tally()

    async def worker() -> None:
        for body in bodies:  # one shared iterator: each worker takes the next unsent body
            started, expected = time.perf_counter(), True
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
                    expected = check is None or check(resp)
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            if not ok:
                tally.errors += 1
                continue
            latencies_ms.append((time.perf_counter() - started) * 1000)
            tally.unexpected += not expected

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


@dataclass
class Cell:
    """One (target, concurrency) measurement."""

    target: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float | None  # the process under test; None when there is none (direct)
    other_cpu_s: dict[str, float]  # the processes around it, by name, and "loadgen"
    unexpected: int = 0

    @staticmethod
    def merged(parts: Sequence[Cell]) -> Cell:
        """One cell from slices of it: counts, times and CPU add up, latencies pool."""
        first = parts[0]
        server = [p.server_cpu_s for p in parts]
        return Cell(first.target, first.concurrency, sum(p.requests for p in parts),
                    sum(p.errors for p in parts), sum(p.seconds for p in parts),
                    [ms for p in parts for ms in p.latencies_ms],
                    None if None in server else sum(s or 0.0 for s in server),
                    {name: sum(p.other_cpu_s[name] for p in parts) for name in first.other_cpu_s},
                    sum(p.unexpected for p in parts))

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)

    @property
    def cpu_ms_per_request(self) -> float | None:
        return None if self.server_cpu_s is None else 1000 * self.server_cpu_s / max(1, self.requests)

    def other_cpu_ms_per_request(self, name: str) -> float:
        return 1000 * self.other_cpu_s[name] / max(1, self.requests)


async def measure_cell(session: aiohttp.ClientSession, target: str, url: str, measured: Server | None,
                       others: Sequence[CpuMeter], bodies: Iterable[bytes], warmup: Iterable[bytes],
                       concurrency: int, headers: Mapping[str, str] = HEADERS,
                       check: ResponseCheck | None = None) -> Cell:
    """Warm up, then send `bodies`, counting the CPU `measured`, `others` and we ourselves spent."""
    # Warm-up fills the connection pools (client -> proxy -> emulator) outside the numbers.
    await asyncio.wait_for(drive(session, url, iter(warmup), concurrency, [], headers), CELL_TIMEOUT_S)
    server_before = measured.cpu_seconds() if measured else 0.0
    others_before = {s.name: s.cpu_seconds() for s in others}
    loadgen_before = time.process_time()
    latencies: list[float] = []
    started = time.perf_counter()
    try:
        tally = await asyncio.wait_for(
            drive(session, url, iter(bodies), concurrency, latencies, headers, check), CELL_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"{target} at concurrency {concurrency}: not done after {CELL_TIMEOUT_S:g}s") from None
    seconds = time.perf_counter() - started
    other_cpu = {s.name: s.cpu_seconds() - others_before[s.name] for s in others}
    other_cpu["loadgen"] = time.process_time() - loadgen_before
    server_cpu = measured.cpu_seconds() - server_before if measured else None
    return Cell(target, concurrency, len(latencies), tally.errors, seconds, latencies, server_cpu,
                other_cpu, tally.unexpected)


async def preflight(session: aiohttp.ClientSession, server: Server, body: bytes, scores: int,
                    headers: Mapping[str, str] = HEADERS) -> Mapping[str, str]:
    """One request before measuring, so a broken target fails loudly rather than as a slow row.

    Returns the answer's headers for the caller's own checks (the gateway's cache header).
    """
    async with session.post(server.url(), data=body, headers=headers) as resp:
        raw = await resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{server.name}: HTTP {resp.status}: {raw[:300]!r}\n{server.log_tail()}")
    answered = orjson.loads(raw).get("scores")
    if not isinstance(answered, list) or len(answered) != scores:
        raise RuntimeError(f"{server.name}: expected {scores} scores, got {raw[:300]!r}")
    return resp.headers


def cache_header_is(expected: str, provider: str | None = None) -> ResponseCheck:
    """A check that the gateway's `X-Rerank-Cache` is `expected` (and `X-Rerank-Provider`, if given)."""
    def check(resp: aiohttp.ClientResponse) -> bool:
        return resp.headers.get("X-Rerank-Cache") == expected and (
            provider is None or resp.headers.get("X-Rerank-Provider") == provider)
    return check


async def expect_cache_header(session: aiohttp.ClientSession, gateway: Server, body: bytes, scores: int,
                              expected: str) -> None:
    found = (await preflight(session, gateway, body, scores)).get("X-Rerank-Cache")
    if found != expected:
        raise RuntimeError(f"{gateway.name}: expected X-Rerank-Cache {expected!r}, got {found!r}\n{gateway.log_tail()}")


async def fill_cache(session: aiohttp.ClientSession, gateway: Server, pool: Sequence[bytes], hit: ResponseCheck,
                     passes: int = 4, concurrency: int = 4) -> None:
    """Send the pool until one whole pass of it passes `hit` (answered from the cache alone).

    A pass can fall short: the gateway skips Redis for a moment after slow calls, and then
    neither reads nor writes it; the next pass fills what the last one missed. Gently (low
    concurrency): filling is not measured, and a slow Redis call stalls the fill.
    """
    for _ in range(passes):
        tally = await drive(session, gateway.url(), iter(pool), concurrency, [], check=hit)
        if tally.errors == 0 and tally.unexpected == 0:
            return
    raise RuntimeError(f"{gateway.name}: the pool was still not fully cached after {passes} passes\n"
                       f"{gateway.log_tail()}")


async def needs_query_per_document(session: aiohttp.ClientSession, emulator: Server, one_query_body: bytes) -> bool:
    """Whether the emulator refuses the KB call's single query for many documents.

    The gateway takes that single query and sends the provider one query per document; if
    the emulator only takes that form, whatever calls it directly (direct, passthrough)
    sends that form too, so the emulator does the same work behind every target.
    """
    async with session.post(emulator.url(), data=one_query_body, headers=HEADERS) as resp:
        await resp.read()
        return resp.status != 200


# --- reporting --------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)  # nearest rank
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else float("nan")


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def pooled_cpu_ms(cells: Iterable[Cell], target: str) -> float | None:
    """CPU ms per request of one target over all its cells, weighted by requests."""
    mine = [c for c in cells if c.target == target and c.server_cpu_s is not None]
    requests = sum(c.requests for c in mine)
    return 1000 * sum(c.server_cpu_s or 0.0 for c in mine) / requests if requests else None


def cell_figures(cells: Iterable[Cell]) -> dict[str, float]:
    """Each cell's figures, named `target.cN.what`, for a benchmark's JSON."""
    found: dict[str, float] = {}
    for c in cells:
        cell = f"{c.target}.c{c.concurrency}"
        found |= {f"{cell}.req_per_s": c.rps, f"{cell}.p50_ms": c.percentile(50), f"{cell}.p99_ms": c.percentile(99),
                  f"{cell}.errors": c.errors, f"{cell}.unexpected": c.unexpected}
        if c.cpu_ms_per_request is not None:
            found[f"{cell}.cpu_ms_per_request"] = c.cpu_ms_per_request
    return found


def find_cell(cells: Iterable[Cell], target: str, concurrency: int) -> Cell | None:
    return next((c for c in cells if c.target == target and c.concurrency == concurrency), None)


async def take_turns(targets: Sequence[str], rounds: int,
                     measure_slice: Callable[[str], Awaitable[Cell]]) -> list[Cell]:
    """One cell per target, each measured in `rounds` slices with the targets taking turns,
    so a stall on a shared machine (another job, hypervisor steal) hits every target alike."""
    slices: dict[str, list[Cell]] = {target: [] for target in targets}
    for _ in range(rounds):
        for target in targets:
            cell = await measure_slice(target)
            print(f"  {cell.target:<11} c={cell.concurrency:<3} {cell.rps:7.0f} req/s  p50 "
                  f"{cell.percentile(50):6.2f} ms  errors {cell.errors}", file=sys.stderr, flush=True)
            slices[target].append(cell)
    return [Cell.merged(slices[target]) for target in targets]
