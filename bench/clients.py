"""The CPU clients add to a miss: the bench config as it is, against it with 100 clients configured.

    python -m bench run clients                       # 2000 requests a round, 7 rounds of each
    python -m bench run clients -- --clients 100 --requests 2000 --rounds 7

bench/miss_logic.py's measure (one process, no sockets, every part of a miss but the two HTTP hops)
run in turns on several apps: one without clients (no key asked), one with --clients named clients in
teams of ten, each with a budget and per-minute limits; the bench's key is one of them, so every
request is identified (a SHA-256 and a lookup), checked against its models, counted against its
and its team's rates (in process: no Redis here), capped in flight, and has its own and its team's
budget reserved and settled with the provider's. Also measured: the clients without budgets, and
no clients but a budget on the provider (what any budget's ledger hold costs a miss). Prints the
best round of each in µs per request and what it adds, as a share of the miss without them (the
target for clients is at most 3%).
Figures only: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
from collections.abc import Sequence

from bench.harness import BENCH_KEY, BENCH_KEY_ENV
from bench.miss_logic import log_requests_to, measure
from bench.registry import Figures


def clients_config(count: int, budgets: bool = True) -> str:
    """`count` clients in teams of ten, the bench's key held by the one in the middle; with or
    without budgets (without, no ledger hold is taken before the call)."""
    client_budget = "budget = { daily_usd = 100.0, monthly_usd = 1000.0 }\n" if budgets else ""
    team_budget = "budget = { daily_usd = 1000.0, monthly_usd = 10000.0 }\n" if budgets else ""
    lines = []
    for team in range((count + 9) // 10):
        lines.append(f"[teams.team-{team}]\n{team_budget}"
                     "limits = { requests_per_minute = 1000000, documents_per_minute = 100000000 }\n")
    for number in range(count):
        key_env = BENCH_KEY_ENV if number == count // 2 else f"BENCH_CLIENT_{number}_KEY"
        os.environ.setdefault(f"BENCH_CLIENT_{number}_KEY", f"bench-client-{number}-key")
        lines.append(
            f'[clients.client-{number}]\nkey_env = "{key_env}"\nteam = "team-{number // 10}"\n{client_budget}'
            "limits = { requests_per_minute = 1000000, documents_per_minute = 100000000, concurrent = 64 }\n")
    return "\n" + "\n".join(lines)


# A budget on the provider alone, no clients: what any budget's ledger hold costs a miss.
PROVIDER_BUDGET = "\n[providers.deepinfra.budget]\ndaily_usd = 1000.0\n"


def variants(count: int) -> dict[str, str]:
    return {
        "none": "",
        f"{count} clients, rates and caps, no budgets": clients_config(count, budgets=False),
        f"{count} clients, rates, caps and budgets": clients_config(count),
        "no clients, a provider budget": PROVIDER_BUDGET,
    }


async def measure_all(requests: int, rounds: int, configs: dict[str, str]) -> dict[str, list[float]]:
    """Rounds taken in turns, so a noisy neighbour on the machine weighs on every variant alike."""
    results: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, extra in configs.items():
            results[name] += await measure(requests, 1, check=True, extra_config=extra)
    return results


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variant", type=int, choices=range(4),
                        help="only this one (0: none, 1: no budgets, 2: budgets, 3: a provider budget), for callgrind: "
                             "MISS_LOGIC_CALLGRIND=1 valgrind --tool=callgrind --instr-atstart=no python -m bench run clients "
                             "-- --variant N --requests 300 --rounds 1; instructions ÷ 300 per request")
    args = parser.parse_args(argv)
    os.environ[BENCH_KEY_ENV] = BENCH_KEY
    log_requests_to(os.devnull)
    configs = variants(args.clients)
    if args.variant is not None:
        name = list(configs)[args.variant]
        configs = {"none": "", name: configs[name]} if args.variant else {"none": ""}
        if os.environ.get("MISS_LOGIC_CALLGRIND"):
            configs = {name: configs[name]}  # one app, counted alone
    results = asyncio.run(measure_all(args.requests, args.rounds, configs))
    base = min(results.get("none", [math.nan]))
    figures: Figures = {"miss_us": base}
    print(f"{'variant':<45} {'best µs/req':>11} {'added':>8} {'of a miss':>9}  rounds")
    for number, (name, rounds) in enumerate(results.items()):
        best = min(rounds)
        print(f"{name:<45} {best:>11.1f} {best - base:>+8.1f} {(best - base) / base:>+9.1%}  "
              f"{', '.join(f'{r:.0f}' for r in rounds)}")
        if number:
            figures[f"added_share_{number}"] = (best - base) / base
    print("target: clients add at most 3% of a miss")
    return figures
