"""Helpers for the chaos suite (tests/test_chaos.py): workload, load runner, outcome checks,
socket and task accounting, and the summary table.

Every request the load sends is generated here together with what a correct answer is
(`emulated_score` of each (query, document, instruction)), so each answer is checked on its own:
it is either *correct* (200, every score within 1e-9 of the emulator's deterministic score,
in the dialect's shape), a *clean error* (4xx/502/503/504 with the JSON error body and our request id,
within the deadline), or *lost* (anything else: an exception or reset, a 500, a body that is
not the error shape, a wrong score, or an answer later than the deadline plus slack).
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.emulator import emulated_score

SCORE_TOLERANCE = 1e-9
# A request answered later than its deadline plus this much was left hanging.
DEADLINE_SLACK_SECONDS = 1.0
PROVIDERS_THAT_SCORE = frozenset({"deepinfra", "fireworks", "cache"})

_WORDS = (
    "bankruptcy court debt mfc cost free fee procedure creditor passport application rubles "
    "kazan office opens weekend deadline notice register property income months lawyer"
).split()
_INSTRUCTIONS = (None, None, "Given a legal question, retrieve passages that answer it", "Rank by relevance")


# --- the workload --------------------------------------------------------------------------

@dataclass(slots=True)
class Call:
    """One request to send, with what a correct answer must hold."""

    number: int
    dialect: str  # deepinfra | cohere-v1 | cohere-v2 | fireworks | tei
    path: str
    body: dict[str, Any]
    queries: list[str]  # one per document
    documents: list[str]
    instruction: str | None
    deadline_seconds: float
    headers: dict[str, str] = field(default_factory=dict)

    def expected(self) -> list[float]:
        return [emulated_score(q, d, self.instruction) for q, d in zip(self.queries, self.documents)]


class Workload:
    """Fresh queries and passages, with a share of (partial) repeats so the cache is exercised.

    Dialects rotate; DeepInfra requests are sometimes pairwise (one query per document), some
    carry an instruction (DeepInfra `instruction`, Fireworks `task`), some repeat a passage.
    `short_deadline` sends `X-Request-Timeout` on every n-th request.
    """

    DIALECTS = ("deepinfra", "cohere-v2", "fireworks", "tei", "deepinfra", "cohere-v1")

    def __init__(self, tag: str, deadline_seconds: float, repeat_share: float = 0.25,
                 short_deadline: tuple[int, float] | None = None) -> None:
        self.tag = tag
        self.slug = re.sub(r"[^A-Za-z0-9]+", "-", tag).strip("-")[:60]  # a request id the gateway keeps
        self.deadline_seconds = deadline_seconds
        self.repeat_share = repeat_share
        self.short_deadline = short_deadline
        self.rng = random.Random(f"chaos:{tag}")
        self._history: list[tuple[str, list[str]]] = []

    def _text(self, words: int) -> str:
        return " ".join(self.rng.choice(_WORDS) for _ in range(words))

    def _fresh_query(self, number: int) -> str:
        return f"{self.tag} q{number}: {self._text(self.rng.randint(3, 7))}?"

    def _fresh_documents(self, number: int, count: int) -> list[str]:
        return [f"{self.tag} p{number}.{j}: {self._text(self.rng.randint(4, 14))}." for j in range(count)]

    def call(self, number: int) -> Call:
        rng = self.rng
        dialect = self.DIALECTS[number % len(self.DIALECTS)]
        if self._history and rng.random() < self.repeat_share:
            query, old = rng.choice(self._history)
            documents = rng.sample(old, rng.randint(1, len(old))) + self._fresh_documents(number, rng.randint(0, 2))
        else:
            query, documents = self._fresh_query(number), self._fresh_documents(number, rng.randint(2, 8))
            self._history.append((query, documents))
        if rng.random() < 0.1:
            documents.append(rng.choice(documents))  # a repeated passage is scored once
        instruction = rng.choice(_INSTRUCTIONS) if dialect in ("deepinfra", "fireworks") else None
        queries = [query] * len(documents)
        if dialect == "deepinfra":
            path = "/v1/inference/Qwen/Qwen3-Reranker-8B"
            if rng.random() < 0.2:  # pairwise: one query per document, two distinct queries
                other = self._fresh_query(number) + " (pairwise)"
                queries = [rng.choice((query, other)) for _ in documents]
                body: dict[str, Any] = {"queries": queries, "documents": documents}
            else:
                body = {"queries": [query], rng.choice(("documents", "passages")): documents}
            if instruction is not None:
                body["instruction"] = instruction
        elif dialect == "fireworks":
            path = "/inference/v1/rerank"
            body = {"model": "accounts/fireworks/models/qwen3-reranker-8b", "query": query, "documents": documents}
            if instruction is not None:
                body["task"] = instruction
        elif dialect == "tei":
            path, body = "/rerank", {"query": query, "texts": documents}
        else:
            path = "/v2/rerank" if dialect == "cohere-v2" else "/v1/rerank"
            body = {"query": query, "documents": documents}
        deadline = self.deadline_seconds
        headers = {"X-Request-ID": f"chaos-{self.slug}-{number}"}
        if self.short_deadline is not None and number % self.short_deadline[0] == 0:
            deadline = self.short_deadline[1]
            headers["X-Request-Timeout"] = f"{deadline:g}"
        return Call(number, dialect, path, body, queries, documents, instruction, deadline, headers)


# --- judging one answer ----------------------------------------------------------------------

@dataclass(slots=True)
class Outcome:
    kind: str  # correct | error | lost
    detail: str  # provider for correct, "STATUS type" for errors, the reason for lost
    seconds: float
    cache_hits: int = 0  # from X-Rerank-Cache, for correct answers
    finished_at: float = 0.0  # time.monotonic() when the answer was in


def _ranked_scores(items: Any, count: int, score_key: str) -> list[float]:
    """A full ranking (every index once, best first) back in document order."""
    if not isinstance(items, list) or len(items) != count:
        raise ValueError(f"expected {count} ranked results, got {_short(items)}")
    scores: list[float | None] = [None] * count
    previous = math.inf
    for item in items:
        index, score = item["index"], item[score_key]
        if scores[index] is not None:
            raise ValueError(f"index {index} twice")
        if score > previous:
            raise ValueError("results are not sorted best first")
        scores[index] = previous = score
    return scores  # type: ignore[return-value]


def answer_scores(call: Call, answer: Any) -> list[float]:
    n = len(call.documents)
    if call.dialect == "deepinfra":
        scores = answer["scores"]
        if len(scores) != n:
            raise ValueError(f"{len(scores)} scores for {n} documents")
        return scores
    if call.dialect == "fireworks":
        return _ranked_scores(answer["data"], n, "relevance_score")
    if call.dialect == "tei":
        return _ranked_scores(answer, n, "score")
    return _ranked_scores(answer["results"], n, "relevance_score")


def judge(call: Call, status: int, headers: Any, raw: bytes, seconds: float) -> Outcome:
    def lost(reason: str) -> Outcome:
        return Outcome("lost", reason, seconds)

    if seconds > call.deadline_seconds + DEADLINE_SLACK_SECONDS:
        return lost(f"answered after {seconds:.2f}s, deadline {call.deadline_seconds:g}s")
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return lost(f"HTTP {status} with a non-JSON body {raw[:80]!r}")
    if status == 200:
        provider = headers.get("X-Rerank-Provider")
        if provider not in PROVIDERS_THAT_SCORE:
            return lost(f"200 from X-Rerank-Provider {provider!r}")
        try:
            scores = answer_scores(call, answer)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return lost(f"200 with a malformed answer ({type(exc).__name__}: {exc})")
        expected = call.expected()
        for position, (got, want) in enumerate(zip(scores, expected)):
            if not (isinstance(got, float) and abs(got - want) <= SCORE_TOLERANCE):
                return lost(f"wrong score from {provider} at {position}: {got!r} != {want!r}")
        hits = re.match(r"hits=(\d+);", headers.get("X-Rerank-Cache", ""))
        return Outcome("correct", provider, seconds, int(hits.group(1)) if hits else 0)
    if status == 500 or not (400 <= status < 500 or status in (502, 503, 504)):
        return lost(f"HTTP {status}: {_short(answer)}")
    error = answer.get("error") if isinstance(answer, dict) else None
    if not (isinstance(error, dict) and all(isinstance(error.get(k), str) and error[k] for k in ("type", "message", "request_id"))):
        return lost(f"HTTP {status} without the error body: {_short(answer)}")
    if error["request_id"] != call.headers["X-Request-ID"] or headers.get("X-Request-ID") != call.headers["X-Request-ID"]:
        return lost(f"HTTP {status} with another request's id {error['request_id']!r}")
    return Outcome("error", f"{status} {error['type']}", seconds)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode(errors="replace")
    return text[:160]


# --- the load ------------------------------------------------------------------------------

@dataclass
class LoadReport:
    scenario: str
    outcomes: list[Outcome]
    wall_seconds: float

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    def details(self, kind: str) -> Counter[str]:
        return Counter(o.detail for o in self.outcomes if o.kind == kind)

    def p99(self) -> float:
        latencies = sorted(o.seconds for o in self.outcomes)
        return latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]

    def max_latency(self) -> float:
        return max(o.seconds for o in self.outcomes)


Milestone = tuple[int, Callable[[], Awaitable[None]]]  # (after this many answers, run this)


async def run_load(
    scenario: str,
    base_url: str,
    workload: Workload,
    requests: int,
    concurrency: int,
    milestones: Sequence[Milestone] = (),
) -> LoadReport:
    """`requests` calls from `concurrency` clients on one keep-alive pool; closed before returning.

    A milestone runs once, as its own task, when that many answers are in (Redis killed at a
    third, restarted at two thirds), so the load keeps going while it runs.
    """
    calls = [workload.call(number) for number in range(requests)]
    outcomes: list[Outcome] = []
    pending = sorted(milestones, key=lambda m: m[0])
    side_tasks: list[asyncio.Task] = []
    next_call = iter(calls)
    # The client's own bound sits well past deadline + slack, so a hang is seen and reported
    # as lost rather than hanging the suite.
    timeout = aiohttp.ClientTimeout(total=workload.deadline_seconds + DEADLINE_SLACK_SECONDS + 3)

    async def client(session: aiohttp.ClientSession) -> None:
        for call in next_call:
            started = time.perf_counter()
            try:
                async with session.post(base_url + call.path, data=orjson.dumps(call.body),
                                        headers={"Content-Type": "application/json", **call.headers}) as response:
                    raw = await response.read()
                    outcome = judge(call, response.status, response.headers, raw, time.perf_counter() - started)
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcome = Outcome("lost", f"{type(exc).__name__}: {exc}"[:160], time.perf_counter() - started)
            outcome.finished_at = time.monotonic()
            outcomes.append(outcome)
            while pending and len(outcomes) >= pending[0][0]:
                side_tasks.append(asyncio.ensure_future(pending.pop(0)[1]()))

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await asyncio.gather(*side_tasks)
    return LoadReport(scenario, outcomes, wall)


# --- sockets and tasks -----------------------------------------------------------------------

_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


@dataclass(frozen=True, slots=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: str


@dataclass(frozen=True)
class Snapshot:
    """This process's open file descriptors, its TCP sockets, and its asyncio tasks."""

    fds: int
    tcp: tuple[TcpSocket, ...]
    other_sockets: int  # unix, udp, ...
    tasks: int

    @classmethod
    def take(cls) -> Snapshot:
        inodes: set[str] = set()
        fds = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # the fd listdir itself used, already closed
            fds += 1
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        tcp = []
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                if parts[9] in inodes:
                    inodes.discard(parts[9])
                    tcp.append(TcpSocket(int(parts[1].rsplit(":", 1)[1], 16), int(parts[2].rsplit(":", 1)[1], 16),
                                         _TCP_STATES.get(parts[3], parts[3])))
        return cls(fds - 1, tuple(tcp), len(inodes), len(asyncio.all_tasks()))  # - the listdir fd

    def peers(self, port: int) -> list[TcpSocket]:
        """Connections to or from `port` (either end of it, both live in this process)."""
        return [s for s in self.tcp if s.state != "LISTEN" and port in (s.local_port, s.remote_port)]

    def without_peers(self, ports: Sequence[int]) -> int:
        """Open fds, not counting TCP connections to or from `ports`."""
        return self.fds - sum(len(self.peers(port)) for port in ports)

    def describe(self) -> str:
        states = Counter(f"{s.state}:{s.local_port}->{s.remote_port}" for s in self.tcp if s.state != "LISTEN")
        return f"fds={self.fds} tasks={self.tasks} other_sockets={self.other_sockets} tcp={dict(states.most_common(20))}"


async def settled(baseline: Snapshot, pooled_ports: Sequence[int] = (), within_seconds: float = 5.0) -> tuple[Snapshot, float]:
    """Wait (up to `within_seconds`) for fds and tasks to come back to the baseline.

    Connections to `pooled_ports` (Redis: the gateway keeps a bounded pool open on purpose)
    are left out of the comparison; the caller bounds them separately.
    """
    started = time.monotonic()
    while True:
        now = Snapshot.take()
        if now.tasks <= baseline.tasks and now.without_peers(pooled_ports) <= baseline.without_peers(pooled_ports):
            return now, time.monotonic() - started
        if time.monotonic() - started > within_seconds:
            return now, time.monotonic() - started
        await asyncio.sleep(0.1)


# --- the table -------------------------------------------------------------------------------

@dataclass
class Row:
    scenario: str
    report: LoadReport
    resources: str  # "fds 41→41, tasks 3→3" or what was left over
    notes: str = ""


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| scenario | requests | correct | clean errors | lost | p99 | max | wall | served by | fds / tasks before→after | notes |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for row in rows:
        report = row.report
        errors = report.details("error")
        error_text = f"{report.count('error')}" + (
            " (" + ", ".join(f"{n}× {d}" for d, n in errors.most_common()) + ")" if errors else "")
        served = ", ".join(f"{p} {n}" for p, n in sorted(report.details("correct").items())) or "-"
        lines.append(
            f"| {row.scenario} | {report.requests} | {report.count('correct')} | {error_text} | "
            f"{report.count('lost')} | {report.p99() * 1000:.0f} ms | {report.max_latency() * 1000:.0f} ms | "
            f"{report.wall_seconds:.1f} s | {served} | {row.resources} | {row.notes} |"
        )
    return "\n".join(lines)


# --- errors the event loop swallowed -----------------------------------------------------------

class LoopErrors:
    """Records what reaches the event loop's exception handler ("Task exception was never
    retrieved", errors in callbacks) while installed; gc.collect() on the way out, so tasks that
    died unobserved are reported here, inside the scenario, not at some later GC."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def __enter__(self) -> LoopErrors:
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(lambda loop, context: self.records.append(context))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.collect()
        assert self._loop is not None
        self._loop.set_exception_handler(self._previous)

    def collect(self) -> None:
        gc.collect()

    @staticmethod
    def describe(context: dict[str, Any]) -> str:
        future = context.get("future")
        where = ""
        if isinstance(future, asyncio.Task):
            where = f" in {getattr(future.get_coro(), '__qualname__', future.get_name())}"
        exception = context.get("exception")
        return f"{context.get('message')}{where}: {exception!r}"[:200]

    def summary(self) -> Counter[str]:
        return Counter(self.describe(c).split(":")[0] for c in self.records)
