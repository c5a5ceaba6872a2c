"""The walk of one miss through the middle of the house: the scoring and quality modules it runs
in, in turn, from RerankService.rerank's start to its end (issue 29's measure of the middle).

    python -m bench run walk            # counts, the visits per module, and the walk itself

    stays     maximal runs of consecutive events (calls and returns) in one module
    returns   stays in a module the walk had already left (stays - distinct modules)
    climbs    stays in scoring/ entered straight from a stay in quality/: the walk came back up
              from the quality package to the scoring one, to go down again later

Modules outside gateway/scoring and gateway/quality (the edges, the guarded call, the provider
adapters) are not counted: they are each one room the walk passes through once per call.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import miss_logic
from bench.registry import Figures
from bench.workload import FreshBodies
from gateway.web.edge import LIVE

GATEWAY = str(Path(__file__).resolve().parents[2] / "gateway")
MIDDLE = ("scoring/", "quality/")


def middle_module(filename: str) -> str | None:
    module = filename[len(GATEWAY) + 1:] if filename.startswith(GATEWAY) else ""
    return module if module.startswith(MIDDLE) else None


async def walk_of_one_miss() -> list[str]:
    async with miss_logic.started_app() as app:
        fresh = FreshBodies(broadcast_query=False)
        payload = miss_logic._Body()
        template = miss_logic._template(app, payload)
        for body in fresh.bodies(3):  # warm: the plan table built, first-call work done
            payload.next(body)
            await app._handle(template.clone())
        service = app[LIVE].current.service
        walk: list[str] = []

        def profile(frame: FrameType, event: str, arg: Any) -> None:
            if event == "call":
                module = middle_module(frame.f_code.co_filename)
            elif event == "return" and frame.f_back is not None:
                module = middle_module(frame.f_back.f_code.co_filename)
            else:
                return
            if module is not None and (not walk or walk[-1] != module):
                walk.append(module)

        rerank = service.rerank

        async def traced(*args: Any, **kwargs: Any) -> Any:
            sys.setprofile(profile)
            try:
                return await rerank(*args, **kwargs)
            finally:
                sys.setprofile(None)

        service.rerank = traced  # type: ignore[method-assign]
        payload.next(fresh.bodies(1)[0])
        response = await app._handle(template.clone())
        if response.status != 200:
            raise RuntimeError(f"the miss was not answered: {response.status}")
        return walk


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.parse_args(argv)
    walk = asyncio.run(walk_of_one_miss())
    visits = Counter(walk)
    returns = len(walk) - len(visits)
    climbs = sum(1 for a, b in itertools.pairwise(walk) if a.startswith("quality/") and b.startswith("scoring/"))
    print(f"stays {len(walk)}, returns to rooms already left {returns}, climbs back up (quality/ -> scoring/) {climbs}")
    print("visits:", ", ".join(f"{module} {count}" for module, count in visits.most_common()))
    print("walk:", " > ".join(walk))
    return {"stays": len(walk), "returns": returns, "climbs": climbs,
            **{f"visits.{module}": count for module, count in visits.items()}}
