"""The one way a test writes a gateway's config: a dict, as `parse_config` takes it, or as config.toml.

    gateway_config(url)          settings over the emulator at `url`: a model, one provider of each kind
    changed(raw, "a.b", value)   a copy with one dotted key set (the validation tests' one mistake each)
    write_config(path, raw)      the same settings as a config.toml, for a process or a reload from a file
    MINIMAL                      the smallest valid settings, no emulator behind them

In-process gateways (`make_gateway`, `parse_config(gateway_config(...))`) and gateway processes
(`write_config` then `serve --config`) read the same settings, so a test moved from one to the
other tests the same gateway.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EMULATOR_KEY = "emulator-test-key"
MODEL = "qwen3-reranker-8b"

MINIMAL: Mapping[str, Any] = {
    "server": {"default_model": "m"},
    "models": {"m": {"aliases": ["M"], "fallback": ["a"]}},
    "providers": {
        "a": {"kind": "deepinfra", "base_url": "https://api.example", "model": "X/Y"},
        "b": {"kind": "tei", "base_url": "http://tei.internal:8080", "model": "Z"},
    },
}


def local_url(port: int) -> str:
    """An emulator (or nothing, for a gateway that never calls out: port 9, discard) on this machine."""
    return f"http://127.0.0.1:{port}"


def gateway_config(
    emulator_url: str, fallback: Sequence[str] = ("deepinfra", "fireworks"), **sections: Mapping[str, Any]
) -> dict[str, Any]:
    """Model MODEL served in `fallback` order by providers of every kind at `emulator_url`.

    `sections` are merged in key by key, at any depth: `providers={"deepinfra": {"budget": {...}}}`
    adds a budget and keeps the rest of deepinfra's entry.
    """
    common = {"base_url": emulator_url, "api_key_env": "EMULATOR_KEY", "timeout_seconds": 5}
    raw: dict[str, Any] = {
        "server": {"default_model": MODEL},
        "models": {
            MODEL: {
                "aliases": ["Qwen/Qwen3-Reranker-8B", "accounts/fireworks/models/qwen3-reranker-8b"],
                "fallback": list(fallback),
                # No canary probes unless a test asks: they are real calls the emulator counts.
                "quality": {"probe_interval_seconds": 0},
            }
        },
        "providers": {
            "deepinfra": {**common, "kind": "deepinfra", "model": "Qwen/Qwen3-Reranker-8B",
                          "price_per_million_tokens": 0.05},
            "fireworks": {**common, "kind": "fireworks", "model": "accounts/fireworks/models/qwen3-reranker-8b",
                          "price_per_million_tokens": 0.10},
            "cohere": {**common, "kind": "cohere", "model": "Qwen/Qwen3-Reranker-8B"},
            "tei": {**common, "kind": "tei", "model": "Qwen/Qwen3-Reranker-8B"},
        },
    }
    _merge(raw, sections)
    return raw


def changed(raw: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `raw` with the key at dotted `path` (parents made as needed) set to `value`."""
    copied = copy.deepcopy(dict(raw))
    *parents, last = path.split(".")
    node = copied
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return copied


def write_config(path: Path, raw: Mapping[str, Any]) -> Path:
    """`raw` as TOML at `path` (replaced whole, as an editor saves it); the path, to pass on."""
    text = _toml(raw)
    assert tomllib.loads(text) == raw, f"the TOML writer lost something:\n{text}"  # None, say: TOML has no null
    path.write_text(text)
    return path


def _merge(into: dict[str, Any], sections: Mapping[str, Any]) -> None:
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _toml(raw: Mapping[str, Any]) -> str:
    """Tables as [a."b.c"] headers, values as TOML literals: what config.toml files hold, no more."""
    lines: list[str] = []

    def table(prefix: list[str], entries: Mapping[str, Any]) -> None:
        values = {key: value for key, value in entries.items() if not isinstance(value, Mapping)}
        if prefix and (values or len(values) == len(entries)):
            lines.append(f"\n[{'.'.join(prefix)}]")
        lines.extend(f"{_key(key)} = {_value(value)}" for key, value in values.items())
        for key, value in entries.items():
            if isinstance(value, Mapping):
                table([*prefix, _key(key)], value)

    table([], raw)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() and key.isascii() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's basic-string escapes
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")
