"""Quiet failures over real sockets: slow providers, breaker blackouts, partial reloads, replaced files.

The chaos suite's "defaults" rows hold the acceptance figures (a hanging first provider behind a
2 s client deadline; both providers failing, then recovering); these tests pin each mechanism
on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import ResilienceConfig, load_config
from gateway.observability.logs import REQUEST_LOGGER
from gateway.web.edge import LIVE
from tests.support.config import changed, gateway_config, local_url, write_config
from tests.support.gateway import GatewayFactory, add_fault, emulator_url

MODEL = "qwen3-reranker-8b"
RELOADABLE = {"admin_key_env": "ADMIN_KEY", "reload_poll_seconds": 0}  # reloads by /admin/reload only


def body(i: int) -> dict[str, Any]:
    return {"query": f"quiet question {i}", "documents": [f"passage {i} a", f"passage {i} b"]}


async def readiness(gateway) -> dict[str, Any]:
    return await (await gateway.get("/readyz")).json()


async def test_a_call_cut_by_the_deadline_counts_against_the_breaker(make_gateway: GatewayFactory, emulator):
    """Five requests cut by their own deadline open the hanging provider's breaker."""
    await add_fault(emulator, "deepinfra", "hang")
    gateway = await make_gateway(fallback=["deepinfra"], server={"request_timeout_seconds": 30})
    for i in range(5):
        response = await gateway.post("/v1/rerank", json=body(i), headers={"X-Request-Timeout": "0.2"})
        assert response.status == 504
    assert (await readiness(gateway))["models"][MODEL]["deepinfra"] == (
        "circuit open after repeated failures: no answer before the request's deadline")


async def test_an_attempt_far_past_the_providers_p99_is_a_timeout(make_gateway: GatewayFactory, emulator):
    """Once DeepInfra's latency is known, a call four times its p99 (at least 250 ms) is cut and
    Fireworks answers, long before DeepInfra's own 5 s timeout or the 30 s request deadline."""
    gateway = await make_gateway(server={"request_timeout_seconds": 30})
    for i in range(25):  # enough answers for a p99
        assert (await gateway.post("/v1/rerank", json=body(i))).headers["X-Rerank-Provider"] == "deepinfra"
    await add_fault(emulator, "deepinfra", "hang")
    started = time.perf_counter()
    response = await gateway.post("/v1/rerank", json=body(100))
    elapsed = time.perf_counter() - started
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "fireworks"
    assert elapsed < 2.0, f"waited {elapsed:.2f} s for a provider known to answer in milliseconds"


async def test_a_hanging_first_provider_leaves_the_second_its_share(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "hang")
    gateway = await make_gateway(server={"request_timeout_seconds": 30})
    started = time.perf_counter()
    response = await gateway.post("/v1/rerank", json=body(1), headers={"X-Request-Timeout": "1"})
    assert response.status == 200 and response.headers["X-Rerank-Provider"] == "fireworks"
    assert time.perf_counter() - started < 1.0  # half the deadline to DeepInfra, Fireworks in the rest


async def test_every_breaker_open_still_serves_through_the_panic_rule(make_gateway: GatewayFactory, emulator, caplog):
    await add_fault(emulator, "*", "status", status=500)
    gateway = await make_gateway(resilience={"breaker_consecutive_failures": 1, "breaker_cooldown_seconds": 600,
                                             "max_retries": 0})
    assert (await gateway.post("/v1/rerank", json=body(1))).status == 502  # both breakers open now
    response = await gateway.post("/v1/rerank", json=body(2))
    assert response.status == 502  # both still down: the panic call failed too
    await (await emulator.delete("/_emulator/faults")).read()

    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response = await gateway.post("/v1/rerank", json=body(3))
    assert response.status == 200, await response.text()
    # DeepInfra's breaker opened first; the failed panic call reopened it, so Fireworks' is now the oldest.
    assert response.headers["X-Rerank-Provider"] == "fireworks"
    line = [r for r in caplog.records if r.name == REQUEST_LOGGER][-1]
    attempts = line.vetted_fields["providers"]
    assert {"provider": "fireworks", "outcome": "ok", "panic": True} == {k: v for k, v in attempts[-1].items() if k != "ms"}
    metrics = await (await gateway.get("/metrics")).text()
    assert 'rerank_gateway_panic_calls_total{model="qwen3-reranker-8b",provider="deepinfra"} 1.0' in metrics
    assert 'rerank_gateway_panic_calls_total{model="qwen3-reranker-8b",provider="fireworks"} 1.0' in metrics
    # The answer closed Fireworks' breaker: the next request goes to it without panic.
    ready = await readiness(gateway)
    assert ready["models"][MODEL]["fireworks"] == "usable"
    assert [w.split(":")[0] for w in ready["warnings"]] == ["provider deepinfra failing"]  # its breaker is still open


async def test_no_panic_while_a_provider_is_usable(make_gateway: GatewayFactory, emulator):
    await add_fault(emulator, "deepinfra", "status", status=500)
    gateway = await make_gateway(resilience={"breaker_consecutive_failures": 1, "breaker_cooldown_seconds": 600})
    for i in range(3):
        assert (await gateway.post("/v1/rerank", json=body(i))).headers["X-Rerank-Provider"] == "fireworks"
    assert "rerank_gateway_panic_calls_total{" not in await (await gateway.get("/metrics")).text()


# --- reloads ---------------------------------------------------------------------------------

# A value other than the default for every [resilience] key, and where a running gateway keeps it.
NEW_VALUES: dict[str, Any] = {
    "max_retries": 7,
    "retry_base_ms": 11.0,
    "retry_cap_ms": 333.0,
    "retry_budget_ratio": 0.7,
    "breaker_consecutive_failures": 2,
    "breaker_error_rate": 0.9,
    "breaker_window_seconds": 5.0,
    "breaker_min_calls": 3,
    "breaker_cooldown_seconds": 4.0,
    "attempt_p99_multiple": 9.0,
    "attempt_min_ms": 123.0,
    "hedge": 77.0,
    "hedge_min_ms": 5.0,
    "last_resort": "lexical",
    "rate_limit_seconds": 2.5,
}
_BREAKER_FIELDS = {
    "breaker_consecutive_failures": "consecutive_failures",
    "breaker_error_rate": "error_rate",
    "breaker_window_seconds": "window_seconds",
    "breaker_min_calls": "min_calls",
    "breaker_cooldown_seconds": "cooldown_seconds",
}


def in_effect(live, key: str) -> Any:
    """The value the next call will use: breakers and retry budgets live across reloads, the rest
    is read from the serving generation's config by the guard and the router at call time."""
    health = live.shared.health["deepinfra"]
    if key in _BREAKER_FIELDS:
        return getattr(health.breaker.config, _BREAKER_FIELDS[key])
    if key == "retry_budget_ratio":
        return health.retry_budget.ratio
    return getattr(live.current.router._config.resilience, key)


def test_every_resilience_key_has_a_reload_case():
    assert set(NEW_VALUES) == set(ResilienceConfig.model_fields)
    assert all(NEW_VALUES[key] != field.default for key, field in ResilienceConfig.model_fields.items())


@pytest.mark.parametrize("key", sorted(NEW_VALUES))
async def test_a_reload_applies_every_resilience_key(key, aiohttp_client, emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    raw = gateway_config(emulator_url(emulator), server=RELOADABLE)
    path = write_config(tmp_path / "config.toml", raw)
    gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
    assert (await gateway.post("/v1/rerank", json=body(1))).status == 200  # DeepInfra's health exists now
    live = gateway.app[LIVE]
    assert in_effect(live, key) == ResilienceConfig.model_fields[key].default

    write_config(path, changed(raw, f"resilience.{key}", NEW_VALUES[key]))
    response = await gateway.post("/admin/reload", headers={"Authorization": "Bearer admin-secret"})
    assert response.status == 200 and (await response.json())["needs_restart"] == []
    assert in_effect(live, key) == NEW_VALUES[key]


async def test_a_lowered_breaker_threshold_opens_at_the_next_failure(aiohttp_client, emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    raw = gateway_config(emulator_url(emulator), server=RELOADABLE, resilience={"max_retries": 0})
    path = write_config(tmp_path / "config.toml", raw)
    gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
    await add_fault(emulator, "deepinfra", "status", status=500)
    assert (await gateway.post("/v1/rerank", json=body(1))).headers["X-Rerank-Provider"] == "fireworks"
    assert (await readiness(gateway))["models"][MODEL]["deepinfra"] == "usable"  # 1 failure of 5

    write_config(path, changed(raw, "resilience.breaker_consecutive_failures", 2))
    assert (await gateway.post("/admin/reload", headers={"Authorization": "Bearer admin-secret"})).status == 200
    await gateway.post("/v1/rerank", json=body(2))
    assert (await readiness(gateway))["models"][MODEL]["deepinfra"] == (
        "circuit open after repeated failures: HTTP 500: emulated fault: HTTP 500")


async def test_a_reload_names_the_keys_that_need_a_restart(aiohttp_client, emulator, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    path = write_config(tmp_path / "config.toml", gateway_config(emulator_url(emulator), server=RELOADABLE))
    gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
    write_config(path, gateway_config(emulator_url(emulator), server={**RELOADABLE, "port": 9999, "log_format": "text"},
                                      cache={"ttl_seconds": 60}))
    with caplog.at_level(logging.WARNING, logger="gateway"):
        response = await gateway.post("/admin/reload", headers={"Authorization": "Bearer admin-secret"})
    assert (await response.json())["needs_restart"] == ["server.port", "server.log_format", "cache.ttl_seconds"]
    assert any("take effect on restart: server.port, server.log_format, cache.ttl_seconds" in r.getMessage()
               for r in caplog.records)


async def test_the_watcher_sees_a_file_renamed_over_the_config(aiohttp_client, emulator, tmp_path):
    """Editors and `sed -i` write a new file and rename it over the old one; the watcher follows
    the path. Same size and modification time as before, so only the inode tells."""
    watched = {"reload_poll_seconds": 0.05}
    path = write_config(tmp_path / "config.toml", gateway_config(emulator_url(emulator), server=watched))
    gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
    before = path.stat()

    replacement = tmp_path / "config.toml.tmp"
    write_config(replacement, gateway_config(emulator_url(emulator), ["fireworks", "deepinfra"], server=watched))
    assert replacement.stat().st_size == before.st_size
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, path)

    deadline = time.monotonic() + 5
    while gateway.app[LIVE].config.models[MODEL].fallback != ["fireworks", "deepinfra"]:
        assert time.monotonic() < deadline, "the replaced file was never loaded"
        await asyncio.sleep(0.05)
    assert (await gateway.post("/v1/rerank", json=body(1))).headers["X-Rerank-Provider"] == "fireworks"


def test_the_config_kinds_are_the_registered_adapters():
    from typing import get_args

    from gateway.config import ProviderKind
    from gateway.providers import PROVIDER_KINDS

    assert set(get_args(ProviderKind)) == set(PROVIDER_KINDS)


def test_secrets_are_read_once_per_generation(tmp_path, monkeypatch):
    from gateway.secrets import ANONYMOUS, Secrets, key_digest

    raw = gateway_config(local_url(9), server={"api_keys_env": "CLIENT_KEYS", "admin_key_env": "ADMIN_KEY"})
    config = load_config(write_config(tmp_path / "config.toml", raw))
    secrets = Secrets.resolve(config, {"EMULATOR_KEY": "k", "CLIENT_KEYS": " a, ,b ", "ADMIN_KEY": ""})
    assert secrets.provider_keys == {"deepinfra": "k", "fireworks": "k", "cohere": "k", "tei": "k"}
    assert secrets.client_digests == {key_digest("a"): ANONYMOUS, key_digest("b"): ANONYMOUS}
    assert secrets.admin_key is None  # set but empty: admin stays off
