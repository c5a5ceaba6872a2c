"""Idle and silent connections are closed on time, so a crowd of them cannot starve the gateway
of file descriptors; when accept() still runs out, the log says so once, not once per attempt."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.config import gateway_config, local_url, write_config
from tests.support.processes import REPO, free_port, running, wait_for_port

pytestmark = [pytest.mark.processes, pytest.mark.slow]

OPEN_FILES = 128  # soft and hard: the gateway cannot raise it, and 200 silent clients exhaust it
SILENT_CLIENTS = 200
WITHIN_SECONDS = 30.0  # a bound for a hung test, not a performance claim


def poll(condition: Callable[[], bool], seconds: float = WITHIN_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # open, nothing to read
    except ConnectionResetError:
        return True


def rerank_over(sock: socket.socket) -> bytes:
    body = b'{"query": "q", "documents": ["a q", "b"]}'
    sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    sock.settimeout(WITHIN_SECONDS)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def fresh_request_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return rerank_over(sock).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextmanager
def gateway_with_few_files(
    config: Path, port: int, log: Path, open_files: int = OPEN_FILES
) -> Iterator[subprocess.Popen[bytes]]:
    def few_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
            cwd=REPO, env={**os.environ, "EMULATOR_KEY": "k"}, stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=few_open_files,
        )
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, int]:
    emulator_port = free_port()
    path = tmp_path / "config.toml"
    write_config(path, gateway_config(local_url(emulator_port), server={"keepalive_timeout_seconds": 2, "header_timeout_seconds": 1}))
    return path, emulator_port


def test_silent_clients_beyond_the_descriptor_limit_are_closed_and_service_resumes(tmp_path, config):
    path, emulator_port = config
    port, log = free_port(), tmp_path / "gateway.log"
    with running(["emulate", "--port", str(emulator_port)], emulator_port), gateway_with_few_files(path, port, log):
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(SILENT_CLIENTS)]
        try:
            # More clients than descriptors: some wait in the listen backlog until others are closed.
            poll(lambda: all(closed_by_server(sock) for sock in silent))
            poll(lambda: fresh_request_answers(port))
        finally:
            for sock in silent:
                sock.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            metrics = b""
            while chunk := sock.recv(65536):
                metrics += chunk
    accept_errors = [line for line in metrics.decode().splitlines() if line.startswith("rerank_gateway_accept_errors_total")]
    assert accept_errors and float(accept_errors[0].split()[-1]) >= 1, "the limit was never reached: the test proves nothing"
    lines = log.read_text().splitlines()
    warnings = [line for line in lines if "cannot accept connections" in line]
    assert 1 <= len(warnings) <= 1 + WITHIN_SECONDS // 10  # one per 10 s interval at most
    assert not any("Traceback" in line for line in lines)
    assert len(lines) < 40, "\n".join(lines[-20:])


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(tmp_path, config):
    path, emulator_port = config
    port, log = free_port(), tmp_path / "gateway.log"
    with (
        running(["emulate", "--port", str(emulator_port)], emulator_port),
        gateway_with_few_files(path, port, log),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        assert rerank_over(sock).startswith(b"HTTP/1.1 200")  # a whole request: the head timeout is over
        started = time.monotonic()
        poll(lambda: closed_by_server(sock))
        idle = time.monotonic() - started
    # Closed by the keep-alive timeout (2 s), not by the head timeout (1 s) that ended with the request.
    assert idle >= 1.5, f"closed after {idle:.2f}s: before the keep-alive timeout"


def test_a_trickling_request_head_is_cut_at_the_head_timeout_not_the_keep_alive_one(tmp_path):
    emulator_port, port = free_port(), free_port()
    path = tmp_path / "config.toml"
    write_config(path, gateway_config(local_url(emulator_port), server={"keepalive_timeout_seconds": 25, "header_timeout_seconds": 1}))
    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         gateway_with_few_files(path, port, tmp_path / "gateway.log"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Ty")  # and nothing more
            started = time.monotonic()
            poll(lambda: closed_by_server(sock))
            waited = time.monotonic() - started
        assert fresh_request_answers(port)
    assert waited < 25, f"held for {waited:.1f}s: only the keep-alive timeout cut it"


KEEP_ALIVE_CLIENTS = 2000  # issue 31's crowd, at a limit of 1024 descriptors


async def _keep_alive_client(port: int, opened: list[asyncio.StreamWriter]) -> bytes:
    """One rerank over a connection left open afterwards; the answer's head, or what ended it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"connect: {exc}".encode()
    opened.append(writer)
    body = b'{"query": "q", "documents": ["a q", "b"]}'
    writer.write(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (OSError, asyncio.IncompleteReadError) as exc:
        return f"closed: {type(exc).__name__}".encode()


async def _crowd(port: int) -> list[bytes]:
    opened: list[asyncio.StreamWriter] = []
    try:
        return await asyncio.gather(*(_keep_alive_client(port, opened) for _ in range(KEEP_ALIVE_CLIENTS)))
    finally:
        for writer in opened:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for writer in opened), return_exceptions=True)


def test_a_crowd_of_keep_alive_clients_past_the_descriptors_gets_503s_never_500s(tmp_path):
    emulator_port, port, log = free_port(), free_port(), tmp_path / "gateway.log"
    path = tmp_path / "config.toml"
    # The head timeout at its default: 2,000 clients on one loop write their requests late on a busy machine.
    write_config(path, gateway_config(local_url(emulator_port)))
    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         gateway_with_few_files(path, port, log, open_files=1024):
        heads = asyncio.run(_crowd(port))
        assert fresh_request_answers(port)  # and the crowd gone, service as before
    statuses = Counter(head.split(b"\r\n")[0] for head in heads)
    # Served up to three quarters of the client descriptors, 503 past them, the rest closed unread
    # (at 1024, in two runs: 528 and 528, 323 and 176, 1,149 and 1,296).
    closed = {b"closed: IncompleteReadError", b"closed: ConnectionResetError"}  # reset: closed with its request unread
    assert set(statuses) <= {b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable", *closed}, statuses
    assert statuses[b"HTTP/1.1 200 OK"] > 0 and statuses[b"HTTP/1.1 503 Service Unavailable"] > 0, statuses
    busy = [head for head in heads if head.startswith(b"HTTP/1.1 503")]
    assert all(b"Retry-After: 1" in head for head in busy)
    assert not any("Traceback" in line for line in log.read_text().splitlines())
