"""What the quality guard adds to every request's plan, when all is well (shadow_rate = 0).

    python bench/quality_overhead.py

Per request the router now asks which cache group the request reads (the first usable
provider's) and which group each step of its plan writes. This times exactly that work, in
process, on a gateway built from the shipped two-provider shape (DeepInfra, Fireworks), with
Fireworks' agreement known and within tolerance (the case where it shares DeepInfra's cache)
and unknown (the case where it would score whole requests), and prints it beside the miss
path's whole CPU cost per request that bench_core.py measures. It asserts nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.app import create_app  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.models import Batch, ScoreRequest  # noqa: E402
from gateway.web.edge import LIVE  # noqa: E402

MODEL = "qwen3-reranker-8b"
ROUNDS = 20_000


def settings() -> dict[str, object]:
    common = {"base_url": "http://127.0.0.1:9", "api_key_env": "BENCH_KEY"}
    return {
        "models": {MODEL: {"fallback": ["deepinfra", "fireworks"], "quality": {"probe_interval_seconds": 0}}},
        "providers": {
            "deepinfra": {**common, "kind": "deepinfra", "model": "Qwen/Qwen3-Reranker-8B"},
            "fireworks": {**common, "kind": "fireworks", "model": "accounts/fireworks/models/qwen3-reranker-8b"},
        },
    }


def per_request_us(router, request: ScoreRequest) -> float:
    def plan() -> None:
        router.cache_group(MODEL, None)
        router._provider_steps(request, [])

    seconds = min(timeit.repeat(plan, number=ROUNDS, repeat=5))
    return seconds / ROUNDS * 1e6


async def main() -> None:
    os.environ["BENCH_KEY"] = "k"
    app = create_app(parse_config(settings()))
    live = app[LIVE]
    router = live.current.router
    pairs = Batch(["q"] * 20, [f"passage {i}" for i in range(20)], None)
    request = ScoreRequest(MODEL, pairs, pairs, router.cache_group(MODEL, None), None)

    unknown = per_request_us(router, request)
    tracker = live.shared.quality.entry(MODEL, "fireworks").agreement
    tracker.add([0.5] * 20, [0.51] * 20)
    agreeing = per_request_us(router, request)
    for _ in range(255):  # a full window of samples: the figure is remembered, not recomputed
        tracker.add([0.5] * 20, [0.51] * 20)
    full_window = per_request_us(router, request)

    print("| Fireworks' agreement | cache group + plan, µs per request |")
    print("|---|---|")
    print(f"| unknown (scores whole requests) | {unknown:.2f} |")
    print(f"| known, within tolerance (shares the cache) | {agreeing:.2f} |")
    print(f"| known, 256 samples in the window | {full_window:.2f} |")
    print("\nCompare with the miss path's CPU per request in bench_core.py (0.45-0.70 ms on this machine).")


if __name__ == "__main__":
    asyncio.run(main())
