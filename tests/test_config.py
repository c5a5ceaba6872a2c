"""config.toml validation: every mistake names its key, and the gateway refuses to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.support.config import MINIMAL, changed

REPO = Path(__file__).parents[1]

def test_shipped_config_is_valid():
    config = load_config(REPO / "config.toml")
    assert config.server.default_model == "qwen3-reranker-8b"
    assert config.models["qwen3-reranker-8b"].fallback[:2] == ["deepinfra", "fireworks"]
    assert config.providers["fireworks"].price_per_million_tokens == 0.10
    assert config.providers["siliconflow"].enabled is False


@pytest.mark.parametrize("file", ["config.toml", "examples/emulator.toml"])
@pytest.mark.parametrize("name", [
    "Qwen/Qwen3-Reranker-8B",  # DeepInfra's id; LiteLLM's deepinfra/ prefix is stripped before sending
    "accounts/fireworks/models/qwen3-reranker-8b",  # Fireworks' id
    "fireworks/accounts/fireworks/models/qwen3-reranker-8b",  # LiteLLM's fireworks_ai/... as it arrives
])
def test_shipped_configs_take_the_names_real_clients_send(file, name):
    config = load_config(REPO / file)
    assert name in config.models["qwen3-reranker-8b"].aliases


@pytest.mark.parametrize("path, value, words", [
    ("providers.a.kind", "openai", "providers.a.kind: 'openai' is not one of 'deepinfra', 'fireworks', 'cohere' or 'tei'"),
    ("providers.a.base_url", "api.example", "providers.a.base_url: must start with http:// or https://"),
    ("providers.a.price_per_million_tokens", -1, "providers.a.price_per_million_tokens"),
    ("providers.a.max_batch", 0, "providers.a.max_batch"),
    ("providers.a.score_transform", "tanh", "providers.a.score_transform"),
    ("providers.a.timeout", 3, "providers.a.timeout: unknown key 'timeout'; did you mean 'timeout_seconds'?"),
    ("models.m.fallbak", ["a"], "models.m.fallbak: unknown key 'fallbak'; did you mean 'fallback'?"),
    ("server.colour", 1,
     "server.colour: unknown key 'colour'; known keys: admin_key_env, admin_wrong_key_max_delay_seconds, api_keys_env,"),
    ("server.port", "8080", "server.port: Input should be a valid integer"),
    ("server.max_documents", 1000.0, "server.max_documents: Input should be a valid integer"),
    ("providers.a.enabled", "false", "providers.a.enabled: Input should be a valid boolean"),
    ("providers.a.timeout_seconds", "10", "providers.a.timeout_seconds: Input should be a valid number"),
    ("models.m.fallback", ["a", "c"], "models.m.fallback: no provider named 'c'"),
    ("models.m.fallback", [], "models.m.fallback"),
    ("models.m.fallback_models", ["n"], "no other model named 'n'"),
    ("models.n", {"fallback": ["a"]}, "provider 'a' already serves model 'm'"),
    ("models.n", {"aliases": ["M"], "fallback": ["b"]}, "'M' already names model 'm'"),
    ("server.default_model", "z", "server.default_model: no model named 'z'"),
    ("server.port", 70000, "server.port"),
    ("server.max_documents", 0, "server.max_documents"),
    ("cache.url", "memcached://x", "cache.url"),
])
def test_mistakes_name_the_key(path, value, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(changed(MINIMAL, path, value))
    assert words in str(caught.value)


def test_whole_numbers_are_taken_where_floats_are_meant():
    config = parse_config(changed(MINIMAL, "providers.a.timeout_seconds", 10))
    assert config.providers["a"].timeout_seconds == 10.0


def test_base_url_takes_environment_references(monkeypatch):
    # examples/emulator.toml: the emulator's port is chosen without editing the file.
    url = "http://127.0.0.1:${EMULATOR_PORT:-9000}"
    monkeypatch.delenv("EMULATOR_PORT", raising=False)
    assert parse_config(changed(MINIMAL, "providers.a.base_url", url)).providers["a"].base_url == "http://127.0.0.1:9000"
    monkeypatch.setenv("EMULATOR_PORT", "9123")
    assert parse_config(changed(MINIMAL, "providers.a.base_url", url)).providers["a"].base_url == "http://127.0.0.1:9123"
    monkeypatch.delenv("NO_SUCH_VAR_SET", raising=False)
    with pytest.raises(ConfigError, match=r"providers.a.base_url: \$\{NO_SUCH_VAR_SET\} is not set"):
        parse_config(changed(MINIMAL, "providers.a.base_url", "http://${NO_SUCH_VAR_SET}"))


def test_the_local_models_example_takes_its_ports_from_the_environment(monkeypatch):
    for name, port in (("E5_PORT", "18081"), ("E5_ENPT_PORT", "18082"), ("EMULATOR_PORT", "19000")):
        monkeypatch.setenv(name, port)
    config = load_config(REPO / "examples/eval/local-models.toml")
    assert [p.base_url for p in config.providers.values()] == [
        "http://127.0.0.1:18081", "http://127.0.0.1:18082", "http://127.0.0.1:19000"]


def test_missing_default_file_hints_at_config_and_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert "config.toml: no such file" in str(caught.value)
    assert "--config" in str(caught.value) and "GATEWAY_CONFIG" in str(caught.value)


def test_unreadable_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: no such file$"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a folder
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_config_path_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.toml"
    path.write_text((REPO / "config.toml").read_text().replace("port = 8080", "port = 8181"))
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    assert load_config().server.port == 8181


def test_redis_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/0")
    assert parse_config(dict(MINIMAL)).cache.url == "redis://127.0.0.1:6390/0"


def test_the_ledger_lives_in_the_caches_redis_unless_budget_url_names_its_own(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    assert parse_config(dict(MINIMAL)).ledger_url == "redis://cache:6379/0"
    own = parse_config(changed(MINIMAL, "budget", {"url": "redis://ledger:6379/0", "daily_usd": 5.0}))
    assert (own.ledger_url, own.cache.url, own.budget.daily_usd) == ("redis://ledger:6379/0", "redis://cache:6379/0", 5.0)
    assert parse_config(changed(MINIMAL, "budget", {"url": ""})).ledger_url == ""  # in each process
    monkeypatch.setenv("LEDGER_REDIS_URL", "redis://from-env:6379/0")
    assert parse_config(dict(MINIMAL)).ledger_url == "redis://from-env:6379/0"


def test_a_ledger_url_that_is_not_redis_names_the_key():
    with pytest.raises(ConfigError, match=r"budget\.url: must be empty .* redis://"):
        parse_config(changed(MINIMAL, "budget", {"url": "http://ledger:6379"}))
    with pytest.raises(ConfigError, match=r"providers\.a\.budget\.url"):
        parse_config(changed(MINIMAL, "providers.a.budget", {"url": "redis://x:1/0"}))  # a provider's budget has none
