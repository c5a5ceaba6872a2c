"""Which fallback order the eval's figures recommend: the providers whose NDCG is within a stated
margin of the best one's, cheapest first, printed as a line ops can paste into the model's section.

Cheapest is USD per 1,000 queries as the config prices them (a provider without a price counts as
free: the table shows that figure beside it). Between equal costs, the better NDCG goes first, then
the faster p50; a provider further below the best than the margin, or one that did not score, is
left out, and says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

DEFAULT_NDCG_MARGIN = 0.02


def recommend(providers: Mapping[str, Mapping[str, Any]], metric: str, margin: float) -> dict[str, Any]:
    """{"metric", "margin", "best", "fallback": [names], "left_out": {name: why}}."""
    scored = {name: entry for name, entry in providers.items() if metric in entry}
    left_out = {name: _not_scored(entry) for name, entry in providers.items() if name not in scored}
    best = max((entry[metric] for entry in scored.values()), default=None)
    within = []
    for position, (name, entry) in enumerate(scored.items()):
        assert best is not None
        below = best - entry[metric]
        if below <= margin + 1e-9:  # rounding of the report's figures must not decide
            within.append((entry["usd_per_1k_queries"], -entry[metric], _or_inf(entry.get("latency_p50_ms")),
                           position, name))
        else:
            left_out[name] = f"{metric} {entry[metric]:.3f}, {below:.3f} below the best"
    return {"metric": metric, "margin": margin, "best": best,
            "fallback": [name for *_, name in sorted(within)], "left_out": left_out}


def format_recommendation(model: str, recommendation: Mapping[str, Any], costs: Mapping[str, float]) -> list[str]:
    """The lines under the table: what was compared, the `fallback = [...]` line, what was left out."""
    if not recommendation["fallback"]:
        return ["no recommendation: no provider scored"]
    metric, fallback = recommendation["metric"].upper(), recommendation["fallback"]
    priced = ", ".join(f"{name} {costs[name]:.2g}" for name in fallback)
    lines = [
        f"recommended: the providers within {recommendation['margin']:g} {metric} of the best "
        f"({recommendation['best']:.3f}), cheapest first ($/1k queries: {priced}); "
        f"paste under [models.\"{model}\"]:",
        f"fallback = {orjson.dumps(fallback).decode().replace(',', ', ')}",
    ]
    lines.extend(f"left out: {name} ({why})" for name, why in recommendation["left_out"].items())
    lines.extend(f"note: {note}" for note in recommendation.get("notes", ()))
    return lines


def _not_scored(entry: Mapping[str, Any]) -> str:
    if "error" in entry:
        return f"error: {entry['error']}"
    return f"skipped: {entry.get('skipped', 'not scored')}"


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value
