"""config.toml validation: every mistake names its key, and the gateway refuses to start."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config

REPO = Path(__file__).parents[1]

BASE: dict[str, Any] = {
    "server": {"default_model": "m"},
    "models": {"m": {"aliases": ["M"], "fallback": ["a"]}},
    "providers": {
        "a": {"kind": "deepinfra", "base_url": "https://api.example", "model": "X/Y"},
        "b": {"kind": "tei", "base_url": "http://tei.internal:8080", "model": "Z"},
    },
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


def test_shipped_config_is_valid():
    config = load_config(REPO / "config.toml")
    assert config.server.default_model == "qwen3-reranker-8b"
    assert config.models["qwen3-reranker-8b"].fallback[:2] == ["deepinfra", "fireworks"]
    assert config.providers["fireworks"].price_per_million_tokens == 0.10
    assert config.providers["siliconflow"].enabled is False


@pytest.mark.parametrize("path, value, words", [
    ("providers.a.kind", "openai", "providers.a.kind: 'openai' is not one of 'deepinfra', 'fireworks', 'cohere' or 'tei'"),
    ("providers.a.base_url", "api.example", "providers.a.base_url: must start with http:// or https://"),
    ("providers.a.price_per_million_tokens", -1, "providers.a.price_per_million_tokens"),
    ("providers.a.max_batch", 0, "providers.a.max_batch"),
    ("providers.a.score_transform", "tanh", "providers.a.score_transform"),
    ("providers.a.timeout", 3, "providers.a.timeout: Extra inputs are not permitted"),
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
        parse_config(with_change(path, value))
    assert words in str(caught.value)


def test_unreadable_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
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
    assert parse_config(copy.deepcopy(BASE)).cache.url == "redis://127.0.0.1:6390/0"
