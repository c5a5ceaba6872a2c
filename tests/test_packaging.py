"""Docker packaging, checked as text: what goes into the build context and what compose passes."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).parents[1]


def test_build_context_leaves_out_the_venv_and_git():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv/", ".git/"} <= ignored


def test_compose_passes_the_admin_key_and_mounts_the_config_folder():
    gateway = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["gateway"]
    assert "GATEWAY_ADMIN_KEY" in gateway["environment"]
    config_path = gateway["environment"]["GATEWAY_CONFIG"]
    mounts = [volume.split(":") for volume in gateway["volumes"]]
    # A folder, never config.toml itself: a single-file bind mount keeps the old inode when the
    # file is replaced (editors, sed -i), so the container would never see the edit.
    assert all(not source.endswith(".toml") for source, *_ in mounts)
    folder = next(target for _, target, *_ in mounts if config_path.startswith(target + "/"))
    assert config_path == f"{folder}/config.toml"
    assert (REPO / "config.toml").is_file()


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
