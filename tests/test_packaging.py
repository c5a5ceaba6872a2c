"""Docker packaging, checked as text: what goes into the build context and what compose passes."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).parents[1]


def test_build_context_leaves_out_the_venv_and_git():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv/", ".git/"} <= ignored


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_passes_the_admin_key_and_mounts_no_more_than_a_config_folder():
    services = _compose()["services"]
    assert "GATEWAY_ADMIN_KEY" in services["gateway"]["environment"]
    assert services["gateway"]["environment"]["GATEWAY_CONFIG"] == "/app/config/config.toml"
    # The repository (with any .env beside it) is never mounted: the gateway gets its config baked
    # in, or a folder holding only its config (deploy/live-config.yml, the demo's deploy/demo).
    assert "volumes" not in services["gateway"]
    live = yaml.safe_load((REPO / "deploy/live-config.yml").read_text())["services"]["gateway"]["volumes"]
    assert [volume.split(":")[0] for volume in live] == ["${GATEWAY_CONFIG_DIR"]
    assert live[0].endswith("}:/app/config:ro")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source not in (".", "./") and not source.endswith((".env", ".toml")), (name, volume)
    assert (REPO / "config.toml").is_file()


def test_compose_publishes_the_gateway_on_loopback_unless_ops_open_it():
    for name in ("gateway", "gateway-demo"):
        for port in _compose()["services"][name]["ports"]:
            assert port.startswith("${GATEWAY_BIND:-127.0.0.1}:"), (name, port)


def test_compose_health_checks_ask_for_readiness():
    services = _compose()["services"]
    for name in ("gateway", "gateway-demo"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name


def test_the_image_runs_as_a_user_of_its_own():
    lines = [line.split() for line in (REPO / "Dockerfile").read_text().splitlines() if line.strip()]
    users = [line[1] for line in lines if line[0] == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_the_demo_profile_runs_the_emulator_and_a_gateway_on_it_without_keys():
    from gateway.config import load_config

    services = _compose()["services"]
    assert services["emulator"]["profiles"] == ["demo"] and services["gateway-demo"]["profiles"] == ["demo"]
    assert "emulate" in services["emulator"]["command"]
    demo = services["gateway-demo"]
    assert "emulator" in demo["depends_on"]
    assert not any(key.endswith("_API_KEY") for key in demo["environment"])  # no provider account needed
    (mount,) = demo["volumes"]
    source, target, _ = mount.split(":")
    assert demo["environment"]["GATEWAY_CONFIG"] == f"{target}/config.toml"
    config = load_config(REPO / source / "config.toml")
    # Every provider is the emulator service, found by its compose name.
    assert {p.base_url for p in config.providers.values()} == {"http://emulator:9000"}
    assert {p.api_key_env for p in config.providers.values()} <= set(demo["environment"])


def _redis_options(service: dict) -> dict[str, str]:
    """A redis-server command's --name value pairs."""
    command = service["command"]
    assert command[0] == "redis-server"
    return {name.removeprefix("--"): value for name, value in zip(command[1::2], command[2::2])}


def test_compose_keeps_the_ledger_in_a_persistent_redis_that_never_evicts():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    environment = services["gateway"]["environment"]
    cache_host = environment["REDIS_URL"].split("//")[1].split(":")[0]
    ledger_host = environment["LEDGER_REDIS_URL"].split("//")[1].split(":")[0]
    assert cache_host != ledger_host
    assert {cache_host, ledger_host} <= set(services["gateway"]["depends_on"])
    ledger = _redis_options(services[ledger_host])
    # Spend must survive a restart (an append-only file on a named volume) and memory pressure.
    assert ledger["appendonly"] == "yes" and ledger["appendfsync"] in ("always", "everysec")
    assert ledger["maxmemory-policy"] == "noeviction"
    volume, target = services[ledger_host]["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]
    # The cache may forget: a bounded LRU without persistence.
    cache = _redis_options(services[cache_host])
    assert cache["maxmemory-policy"] == "allkeys-lru" and cache["appendonly"] == "no" and "maxmemory" in cache
