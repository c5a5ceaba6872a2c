"""Gateway processes sharing one Redis ledger: under 64 concurrent requests they do not overspend,
and through a Redis killed under them they spend at most what remained and lose no spend."""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import aiohttp
import pytest

from tests.support.config import gateway_config, local_url, write_config
from tests.support.ledger_outage import (
    PERSISTENT,
    admin_spend,
    gateways,
    killed_mid_call,
    ledger_stalled_on_a_cluster,
    ledger_stalled_under_load,
    ledger_tokens,
    refused_replicas_through_an_outage,
    settled_everywhere,
    write_back_through_an_outage,
)
from tests.support.processes import REPO, free_port, running
from tests.support.redis_server import RedisServer, needs_redis_server

if TYPE_CHECKING:  # imported by pytest as a plugin, so that its asserts are rewritten
    from tests.support.redis_cluster import RedisCluster

pytestmark = [pytest.mark.processes, pytest.mark.slow, pytest.mark.redis]
pytest_plugins = ["tests.support.redis_cluster"]

BUDGET_USD = 0.0005
CONCURRENCY = 64
DI = "/v1/inference/Qwen/Qwen3-Reranker-8B"


def body(i: int) -> dict:
    return {"queries": [f"question {i} about fees"], "documents": [f"passage {i}-{d} on the fees of the MFC" for d in range(5)]}


async def test_two_processes_under_load_stay_within_the_overshoot_bound(tmp_path, redis_url):
    emulator_port, ports = free_port(), (free_port(), free_port())
    config = tmp_path / "config.toml"
    # A generous ledger bound: this test is about reservations under load on a shared 2-core
    # machine, not about a slow Redis (whose per-process fallback has its own tests).
    write_config(config, gateway_config(local_url(emulator_port), ["deepinfra"], server={"admin_key_env": "ADMIN_KEY"},
                                        cache={"ledger_timeout_ms": 2000, "ledger_reserve_timeout_ms": 2000},
                                        providers={"deepinfra": {"budget": {"daily_usd": BUDGET_USD}}}))
    env = {"EMULATOR_KEY": "k", "REDIS_URL": redis_url, "ADMIN_KEY": "admin"}
    counter = itertools.count()
    costs: list[float] = []
    refused = 0

    async def client(session: aiohttp.ClientSession, worker: int) -> None:
        nonlocal refused
        port = ports[worker % 2]
        while True:
            async with session.post(f"http://127.0.0.1:{port}{DI}", json=body(next(counter))) as response:
                if response.status == 429:
                    refused += 1
                    return
                assert response.status == 200, await response.text()
                costs.append((await response.json())["inference_status"]["cost"])

    with running(["emulate", "--port", str(emulator_port), "--latency-ms", "20"], emulator_port), \
         running(["serve", "--config", str(config), "--port", str(ports[0]), "--workers", "1"], ports[0], env=env), \
         running(["serve", "--config", str(config), "--port", str(ports[1]), "--workers", "1"], ports[1], env=env):
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.wait_for(asyncio.gather(*[client(session, w) for w in range(CONCURRENCY)]), 120)
            async with session.get(f"http://127.0.0.1:{ports[1]}/admin/spend", headers={"Authorization": "Bearer admin"}) as response:
                today = (await response.json())["providers"]["deepinfra"]["today"]

    spent = today["usd"]
    most_per_call = max(costs)
    overshoot = spent - BUDGET_USD
    print(f"\nbudget ${BUDGET_USD}, spent ${spent:.9f} in {len(costs)} calls from 2 processes x {CONCURRENCY // 2} clients; "
          f"overshoot ${overshoot:.9f} = {overshoot / most_per_call:.2f} calls' worth (a whole burst would be {CONCURRENCY})")
    assert refused == CONCURRENCY
    assert abs(spent - sum(costs)) < 1e-9  # the shared ledger saw every call both processes made
    assert today["reserved_usd"] == 0  # every reservation settled or released
    # The bound: reservations hold the budget while calls are in flight, so spend passes it only
    # by what the estimates undershot, never by a burst of 64 calls' worth.
    assert overshoot <= 2 * most_per_call


# --- through a Redis outage: real redis-servers, killed with SIGKILL under the gateways


@needs_redis_server
async def test_two_replicas_through_a_redis_outage_spend_at_most_twice_what_remained(tmp_path):
    # A budget of ~30 calls: a replica that fell back from spent = 0 would make ~30 more.
    figures = await refused_replicas_through_an_outage(tmp_path, budget_usd=0.0001)
    print("\n" + figures.summary())
    # Each replica's fallback holds what remained at its last reply; a call's estimate may fall
    # short of its cost, by at most that call's worth, once per replica.
    assert figures.outage_spend_usd <= 2 * figures.remaining_usd + 2 * figures.most_per_call_usd
    assert figures.remaining_usd < figures.budget_usd / 4  # the budget was spent before the kill


@needs_redis_server
async def test_spend_made_while_redis_was_away_is_written_back(tmp_path):
    figures = await write_back_through_an_outage(tmp_path, outage_seconds=4.0)
    print("\n" + figures.summary())
    assert figures.answered > 0 and figures.emulator_tokens > 0
    assert figures.failed == figures.unanswered == 0  # a dying Redis costs no request
    assert figures.kept >= 0.98
    assert figures.ledger_tokens <= figures.emulator_tokens  # written back once, never twice


@needs_redis_server
async def test_a_persistent_ledger_redis_restarted_mid_month_keeps_the_spend_and_the_decisions(tmp_path, redis_url):
    ledger = RedisServer(tmp_path, extra_args=[*PERSISTENT, "--maxmemory-policy", "noeviction"])
    ledger.start()
    budget = {"budget": {"url": ledger.url}, "providers": {"deepinfra": {"budget": {"daily_usd": BUDGET_USD / 10}}}}
    counter = itertools.count()
    try:
        with gateways(REPO, tmp_path, redis_url, 1, budget) as (_, [port]):
            async with aiohttp.ClientSession() as session:

                async def status_of_a_miss() -> int:
                    async with session.post(f"http://127.0.0.1:{port}{DI}", json=body(next(counter))) as response:
                        return response.status

                answered = 0
                while await status_of_a_miss() == 200:
                    answered += 1
                before = await admin_spend(session, port)
                ledger.stop()  # SIGKILL
                await asyncio.to_thread(ledger.start)  # same port, same directory: its AOF
                await settled_everywhere(session, [port])
                after = await admin_spend(session, port)
                assert await status_of_a_miss() == 429  # the budget is still spent
                assert (await admin_spend(session, port))["ledger"]["figures"] == "shared"  # decided by Redis
        day_before, day_after = before["providers"]["deepinfra"]["today"], after["providers"]["deepinfra"]["today"]
        assert answered > 1 and day_before["tokens"] > 0
        for key in ("tokens", "usd", "reported"):
            assert day_after[key] == day_before[key]
        assert after["gateway"]["month"]["usd"] == before["gateway"]["month"]["usd"]
        assert ledger_tokens(ledger)[0] == day_before["tokens"]
        # The cache's Redis is the tests' default (no persistence), the ledger's keeps: no warning on start.
    finally:
        ledger.stop()


@needs_redis_server
async def test_a_hung_ledger_redis_costs_no_request_and_no_token(tmp_path):
    figures = await ledger_stalled_under_load(tmp_path, stall_seconds=3.0)
    print("\n" + figures.summary())
    assert figures.answered > 0 and figures.emulator_tokens > 0
    assert figures.failed == figures.unanswered == 0, figures.failures  # a hung ledger refuses nobody
    assert figures.ledger_tokens == figures.emulator_tokens  # every token billed, once


@pytest.mark.cluster
async def test_a_hung_budget_master_costs_no_request_and_no_token(tmp_path, redis_failover_cluster: RedisCluster):
    figures = await ledger_stalled_on_a_cluster(tmp_path, redis_failover_cluster, stall_seconds=1.5)
    print("\n" + figures.summary())
    assert figures.answered > 0 and figures.emulator_tokens > 0
    assert figures.failed == figures.unanswered == 0, figures.failures
    assert figures.ledger_tokens == figures.emulator_tokens


@needs_redis_server
async def test_a_gateway_killed_mid_call_leaves_the_ledger_at_or_above_what_the_provider_billed(tmp_path):
    figures = await killed_mid_call(tmp_path, in_flight=4)
    print("\n" + figures.summary())
    assert figures.ledger_estimated_tokens > 0  # the dead gateway's holds were charged when found expired
    assert figures.ledger_tokens >= figures.emulator_tokens  # errs high, never low
