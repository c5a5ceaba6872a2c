"""The command line, run as real processes: serve, check-config, emulate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest

from gateway.emulator import emulated_score
from tests.support.config import gateway_config, local_url, write_config
from tests.support.polling import eventually
from tests.support.processes import REPO, free_port, running

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m gateway ARGS`; an env value of "REMOVE" unsets that variable."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
        env={name: value for name, value in merged.items() if value != "REMOVE"},
    )


def test_version_comes_from_the_package_metadata():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rerank-gateway {version('rerank-gateway')}"


def test_check_config_without_a_file_says_how_to_name_one(tmp_path):
    result = run_cli("check-config", env={"GATEWAY_CONFIG": "REMOVE"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "config.toml: no such file" in result.stderr
    assert "--config" in result.stderr and "GATEWAY_CONFIG" in result.stderr


def test_reload_command_reloads_the_gateway_on_the_configs_address(tmp_path):
    gateway_port = free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9), server={"port": gateway_port, "admin_key_env": "TEST_ADMIN_KEY"}))
    env = {"EMULATOR_KEY": "", "TEST_ADMIN_KEY": "admin-secret"}
    with running(["serve", "--config", str(config)], gateway_port, env=env) as gateway:
        config.write_text(config.read_text().replace('fallback = ["deepinfra", "fireworks"]', 'fallback = ["fireworks"]'))
        reloaded = run_cli("reload", "--config", str(config), env=env)
        assert reloaded.returncode == 0, reloaded.stderr
        assert json.loads(reloaded.stdout)["models"] == {"qwen3-reranker-8b": ["fireworks"]}

        config.write_text(config.read_text().replace('kind = "fireworks"', 'kind = "fireworx"'))
        refused = run_cli("reload", "--config", str(config), "--url", f"http://127.0.0.1:{gateway_port}", env=env)
        assert refused.returncode == 1
        assert "'fireworx' is not one of" in json.loads(refused.stdout)["error"]["message"]
    log_lines = [json.loads(line) for line in gateway.log.lines if line.startswith("{")]
    unserved = [line for line in log_lines if line["message"].endswith("NO USABLE PROVIDER")]
    assert unserved and {line["level"] for line in unserved} == {"WARNING"}


def test_spend_command_prints_each_window_reported_and_estimated_and_the_gateway_total(tmp_path):
    emulator_port, gateway_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port),
                                         server={"port": gateway_port, "admin_key_env": "TEST_ADMIN_KEY"}))
    env = {"EMULATOR_KEY": "k", "TEST_ADMIN_KEY": "admin-secret"}
    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         running(["serve", "--config", str(config)], gateway_port, env=env):
        body = json.dumps({"query": "fees", "documents": ["the fees of the MFC", "opening hours"]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{gateway_port}/v1/rerank", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        table = run_cli("spend", "--config", str(config), env=env)
        raw = run_cli("spend", "--config", str(config), "--json", env=env)
    assert table.returncode == 0, table.stderr
    spent = json.loads(raw.stdout)
    tokens = spent["providers"]["deepinfra"]["today"]["tokens"]
    assert tokens > 0 and spent["providers"]["deepinfra"]["today"]["reported"]["tokens"] == tokens
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["scope", "window", "tokens", "reported", "estimated"]
    deepinfra_today = next(line.split() for line in lines if line.startswith("deepinfra "))
    assert deepinfra_today[2:5] == [str(tokens), str(tokens), "0"]
    assert [line.split()[3] for line in lines if line.startswith("gateway (total)")] == [str(tokens)] * 2
    assert lines[-1] == "figures: THIS PROCESS ONLY (in-process ledger, or the shared ledger is unreachable)"


def test_spend_command_without_an_admin_key_says_why(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9), server={"admin_key_env": "TEST_ADMIN_KEY"}))
    result = run_cli("spend", "--config", str(config), env={"TEST_ADMIN_KEY": ""})
    assert result.returncode == 2
    assert "cannot read spend" in result.stderr and "$TEST_ADMIN_KEY is empty or not set" in result.stderr


def test_reload_command_without_an_admin_key_says_why(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9), server={"admin_key_env": "TEST_ADMIN_KEY"}))
    result = run_cli("reload", "--config", str(config), env={"TEST_ADMIN_KEY": ""})
    assert result.returncode == 2
    assert "$TEST_ADMIN_KEY is empty or not set" in result.stderr


def test_check_config_says_which_providers_are_usable(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9)))
    without_key = run_cli("check-config", "--config", str(config), env={"EMULATOR_KEY": ""})
    assert without_key.returncode == 1
    assert "model qwen3-reranker-8b: NO USABLE PROVIDER" in without_key.stdout
    assert "deepinfra: skipped: no API key ($EMULATOR_KEY is empty)" in without_key.stdout
    unset = run_cli("check-config", "--config", str(config), env={"EMULATOR_KEY": "REMOVE"})
    assert "deepinfra: skipped: no API key ($EMULATOR_KEY is not set)" in unset.stdout

    with_key = run_cli("check-config", "--config", str(config), env={"EMULATOR_KEY": "k"})
    assert with_key.returncode == 0
    assert "model qwen3-reranker-8b: uses deepinfra, fireworks" in with_key.stdout


def test_check_config_says_each_providers_route_and_warns_of_a_key_over_plain_http(tmp_path):
    config = tmp_path / "config.toml"
    providers = {"deepinfra": {"base_url": "http://reranker.internal:8000"}, "fireworks": {"proxy": ""}}
    write_config(config, gateway_config(local_url(9), providers=providers))
    environ = {"EMULATOR_KEY": "k", "HTTP_PROXY": "http://ops:hunter2@egress:3128", "NO_PROXY": "", "no_proxy": "",
               "http_proxy": "REMOVE"}
    result = run_cli("check-config", "--config", str(config), env=environ)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert ("provider deepinfra: http://reranker.internal:8000 via http://ops:***@egress:3128 (from HTTP_PROXY)"
            in lines)
    assert "provider fireworks: http://127.0.0.1:9 direct" in lines
    assert any(line.startswith("warning: provider deepinfra sends its API key over plain http") for line in lines)
    assert "hunter2" not in result.stdout


def test_a_ca_file_that_does_not_load_is_an_invalid_config(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9), providers={"deepinfra": {"ca_file": str(tmp_path / "none.pem")}}))
    result = run_cli("check-config", "--config", str(config), env={"EMULATOR_KEY": "k"})
    assert result.returncode == 2
    assert "providers.deepinfra.ca_file: cannot load" in result.stderr


def test_invalid_config_refuses_to_start(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9), providers={"fireworks": {"kind": "fireworx"}}))
    for command in ("check-config", "serve"):
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 2
        assert "providers.fireworks.kind: 'fireworx' is not one of 'deepinfra', 'fireworks'" in result.stderr


async def test_serve_and_emulate_as_processes(tmp_path):
    emulator_port, gateway_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port)))
    env = {"EMULATOR_KEY": "process-key"}
    with running(["emulate", "--port", str(emulator_port), "--api-key", "process-key"], emulator_port), \
         running(["serve", "--config", str(config), "--port", str(gateway_port)], gateway_port, env=env):
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{gateway_port}"
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
            body = {"queries": ["what does it cost?"], "passages": ["it costs nothing", "it opens at eight"]}
            async with session.post(f"{base}/v1/inference/Qwen/Qwen3-Reranker-8B", json=body) as response:
                assert response.status == 200
                assert response.headers["X-Rerank-Provider"] == "deepinfra"
                scores = (await response.json())["scores"]
    assert scores == pytest.approx([emulated_score("what does it cost?", p) for p in body["passages"]], abs=1e-12)


async def test_sigterm_lets_requests_in_flight_finish(tmp_path):
    import asyncio
    import signal

    emulator_port, gateway_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port), server={"shutdown_grace_seconds": 10}))
    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         running(["serve", "--config", str(config), "--port", str(gateway_port)], gateway_port, env={"EMULATOR_KEY": "k"}) as gateway:
        async with aiohttp.ClientSession() as session:
            fault = {"provider": "deepinfra", "mode": "slow", "delay_ms": 1500}
            async with session.post(f"http://127.0.0.1:{emulator_port}/_emulator/faults", json=fault) as response:
                assert response.status == 200
            body = {"queries": ["slow question"], "passages": ["a", "b"]}
            url = f"http://127.0.0.1:{gateway_port}/v1/inference/Qwen/Qwen3-Reranker-8B"
            in_flight = asyncio.ensure_future(session.post(url, json=body))

            async def upstream_call_started() -> bool:
                async with session.get(f"http://127.0.0.1:{emulator_port}/_emulator/stats") as stats:
                    return bool((await stats.json())["requests"]["deepinfra"])

            await eventually(upstream_call_started, what="the slow call reaching the emulator")
            gateway.send_signal(signal.SIGTERM)

            async def refuses_new_connections() -> bool:
                try:
                    async with aiohttp.ClientSession() as fresh, fresh.get(f"http://127.0.0.1:{gateway_port}/healthz"):
                        return False
                except aiohttp.ClientConnectionError:
                    return True

            await eventually(refuses_new_connections, what="the gateway no longer accepting")
            response = await in_flight
            assert response.status == 200
            assert len((await response.json())["scores"]) == 2
        assert await asyncio.to_thread(gateway.wait, 10) == 0


def raw_http(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\n{}",  # NUL in a header
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",  # not a header at all
])
def test_requests_aiohttp_refuses_get_the_gateways_json_error(tmp_path, request_bytes):
    gateway_port = free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9)))
    with running(["serve", "--config", str(config), "--port", str(gateway_port)], gateway_port) as gateway:
        answer = raw_http(gateway_port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in header_lines)}
    assert status_line.split()[1] == "400"
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["type"] == "bad_request" and error["message"].startswith("malformed HTTP request: ")
    assert error["request_id"] == headers["x-request-id"]
    log = gateway.log.text()
    assert "Traceback" not in log and "malformed HTTP request" in log


def test_a_gateway_logging_more_than_a_pipe_holds_keeps_serving(tmp_path):
    # Each refused request is a log line of some 180 bytes: 1000 are nearly three times the 64 KiB
    # a pipe holds, which a gateway whose stderr nobody reads fills and then blocks on.
    gateway_port = free_port()
    config = tmp_path / "config.toml"
    write_config(config, gateway_config(local_url(9)))
    refused = b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"
    with running(["serve", "--config", str(config), "--port", str(gateway_port)], gateway_port) as gateway:
        for _ in range(1000):
            assert raw_http(gateway_port, refused).split(b" ", 2)[1] == b"400"
    assert gateway.log.count("malformed HTTP request from") == 1000
