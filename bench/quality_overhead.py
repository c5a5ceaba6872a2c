"""What the quality guard adds to every request's plan, when all is well (shadow_rate = 0).

    python -m bench run quality-overhead

Per request the router now asks which cache group the request reads (the first usable
provider's) and which group each step of its plan writes. This times exactly that work, in
process, on a gateway built from the shipped two-provider shape (DeepInfra, Fireworks), with
Fireworks' agreement known and within tolerance (the case where it shares DeepInfra's cache)
and unknown (the case where it would score whole requests), and on another scale, calibrated
(it shares through the map onto DeepInfra's scale); then what fitting the map and mapping a
score cost. It prints them beside the miss path's whole CPU cost per request that bench/core.py
measures, and asserts nothing about them.
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Sequence
from typing import Any

from bench.micro import Micro
from bench.registry import Figures
from gateway.app import create_app
from gateway.config import parse_config
from gateway.models import Batch, ScoreRequest
from gateway.web.edge import LIVE

MODEL = "qwen3-reranker-8b"


def settings() -> dict[str, object]:
    common = {"base_url": "http://127.0.0.1:9", "api_key_env": "BENCH_KEY"}
    return {
        "models": {MODEL: {"fallback": ["deepinfra", "fireworks"], "quality": {"probe_interval_seconds": 0}}},
        "providers": {
            "deepinfra": {**common, "kind": "deepinfra", "model": "Qwen/Qwen3-Reranker-8B"},
            "fireworks": {**common, "kind": "fireworks", "model": "accounts/fireworks/models/qwen3-reranker-8b"},
        },
    }


def per_request_us(micro: Micro, name: str, router: Any, request: ScoreRequest) -> float:
    """The cache group and plan of one request, on pyperf; 0 in a pyperf worker not running it."""
    queries = request.whole.queries

    def plan() -> None:
        # The query's language is worked out only where the model's plans differ by language.
        router.cache_group(MODEL, None, router.language_of(MODEL, queries))
        router.planner.steps(request, [])

    return (micro.time(name, plan) or 0.0) * 1e6


def main(argv: Sequence[str] | None = None) -> Figures:
    micro = Micro("quality-overhead", argv)
    os.environ["BENCH_KEY"] = "k"
    app = create_app(parse_config(settings()))
    live = app[LIVE]
    router = live.current.router
    pairs = Batch(["q"] * 20, [f"passage {i}" for i in range(20)], None)
    request = ScoreRequest(MODEL, pairs, pairs, router.cache_group(MODEL, None)[0], None)

    unknown = per_request_us(micro, "plan.agreement_unknown", router, request)
    # Through the board, as probes and shadow calls do: the plan table is built again when it changes.
    board = live.shared.quality_board
    board.add_agreement(MODEL, "fireworks", [0.5] * 20, [0.51] * 20)
    agreeing = per_request_us(micro, "plan.agreeing", router, request)
    for _ in range(255):  # a full window of samples: the figure is remembered, not recomputed
        board.add_agreement(MODEL, "fireworks", [0.5] * 20, [0.51] * 20)
    full_window = per_request_us(micro, "plan.full_window", router, request)
    board.forget_agreement(MODEL, "fireworks")  # another scale: shares only through the map onto DeepInfra's
    grid = [0.01 + 0.98 * i / 1023 for i in range(1024)]
    board.add_agreement(MODEL, "fireworks", grid, [p**3 for p in grid])
    tracker = board.entry(MODEL, "fireworks").agreement
    fit_ms = timeit.timeit(tracker.calibration, number=1) * 1000  # the first call fits
    calibrated = per_request_us(micro, "plan.calibrated", router, request)
    scale = live.current.router.table.plan(MODEL).by_provider["fireworks"].scale
    assert scale is not None, "the bench's rescaled pairs did not calibrate"
    scores = [p**3 for p in grid[::10]]
    map_us = (micro.time("map_scores", lambda: scale.apply(scores), per_call=len(scores)) or 0.0) * 1e6
    if micro.in_worker:
        return {}

    print("| Fireworks' agreement | cache group + plan, µs per request |")
    print("|---|---|")
    print(f"| unknown (scores whole requests) | {unknown:.2f} |")
    print(f"| known, within tolerance (shares the cache) | {agreeing:.2f} |")
    print(f"| known, 256 samples in the window | {full_window:.2f} |")
    print(f"| another scale, calibrated on 1,024 pairs (shares through the map) | {calibrated:.2f} |")
    print(f"\nFitting the map on 1,024 pairs: {fit_ms:.1f} ms (again once a tenth of the pairs is new); "
          f"mapping a fresh score: {map_us:.2f} µs.")
    print("\nCompare with the miss path's CPU per request in bench/core.py (0.45-0.70 ms on this machine).")
    return micro.figures | {"calibration_fit_ms": fit_ms}
