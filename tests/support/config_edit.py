"""A small valid config, and a copy of it with one key changed."""

from __future__ import annotations

import copy
from typing import Any

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
