"""Micro-benchmarks on pyperf: calibrated loops, warm-ups, several worker processes, its own JSON.

A micro-benchmark module builds one `Micro` from its argv and calls `time` for each function it
measures. pyperf runs each in worker processes it spawns as `python -m bench run NAME -- --worker
...`, which run the module's `main` again: whatever a module does besides its micro-benchmarks
(a whole request over sockets, say) goes after `if micro.in_worker: return {}`.
Its options are pyperf's (`python -m bench run NAME -- --help`): `--fast`, `--rigorous`,
`-o FILE` for pyperf's own JSON (compare two with `python -m pyperf compare_to`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import pyperf


class Micro:
    def __init__(self, name: str, argv: Sequence[str] | None,
                 options: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
        self.runner = pyperf.Runner(program_args=("-m", "bench", "run", name, "--"))
        if options is not None:
            options(self.runner.argparser)
        self.args = self.runner.parse_args(list(argv or ()))
        self.in_worker: bool = self.args.worker
        self.figures: dict[str, float] = {}

    def time(self, name: str, func: Callable[[], object], per_call: int = 1) -> float | None:
        """Seconds per call of `func` (the mean over pyperf's values); None in a worker not running it.

        `per_call`: `func` does that many of the things measured (`inner_loops` to pyperf).
        """
        result = self.runner.bench_func(name, func, inner_loops=per_call)
        if result is None or self.in_worker:
            return None
        mean: float = result.mean()
        self.figures[f"{name}.mean_s"] = mean
        self.figures[f"{name}.stdev_s"] = result.stdev() if result.get_nvalue() > 1 else 0.0
        return mean
