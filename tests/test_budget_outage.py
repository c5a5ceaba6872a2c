"""The Redis ledger through an outage: what a process falls back to, and the spend it writes back.

Against a real redis-server: the shared figures every reply carries, the pending deltas written
back once (a lost reply retried never counts twice), the 80% warning logged once for all
processes, and the start-up warning about a Redis that may lose spend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.budget import Limit, RedisLedger, Refusal, Reservation
from gateway.budget.base import Spend
from gateway.budget.redis import _WRITE_BACK_SCRIPT
from gateway.redisio.commands import Command, DirectConnections
from tests.support.redis_server import RedisServer, needs_redis_server
from tests.support.stall import stall_the_next_call

START = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
HOLD = 30.0
LIMIT = Limit("deepinfra", daily_usd=1.0, monthly_usd=None)
DAY_KEY = "rb:{budget}:t:2025-03-10:deepinfra"
HOLDS_KEY = "rb:{budget}:h:2025-03-10:deepinfra"

pytestmark = [needs_redis_server, pytest.mark.redis]


class Flaky:
    """Commands to a real Redis that can be cut off, or lose the reply to one write-back it ran."""

    def __init__(self, url: str) -> None:
        self.inner = DirectConnections(aioredis.Redis.from_url(url), 4)
        self.down = False
        self.lose_write_back_reply = False
        self.write_backs_run = 0

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        if self.down:
            raise RedisConnectionError("cut off by the test")
        replies = await self.inner.execute(commands)
        if any(command[:2] == ("EVALSHA", _WRITE_BACK_SCRIPT.sha) for command in commands):
            self.write_backs_run += 1
            if self.lose_write_back_reply:
                self.lose_write_back_reply = False
                raise RedisConnectionError("reply lost after Redis ran it")
        return replies

    async def execute_each(self, commands: Sequence[Command]) -> list[Any]:
        if self.down:
            raise RedisConnectionError("cut off by the test")
        return await self.inner.execute_each(commands)

    async def load_script(self, source: str) -> None:
        await self.inner.load_script(source)

    async def warm_up(self, connections: int) -> None:
        await self.inner.warm_up(connections)

    async def ping(self, timeout_seconds: float) -> bool:
        return await self.inner.ping(timeout_seconds)

    async def aclose(self) -> None:
        await self.inner.aclose()


def flaky_ledger(url: str) -> tuple[RedisLedger, Flaky]:
    commands = Flaky(url)
    # No back-off: each call tries Redis, so the test decides when it is away and when back.
    return RedisLedger(commands, timeout_seconds=2.0, clock=lambda: START, retry_after_seconds=0.0), commands


async def granted(ledger: RedisLedger, amount: float) -> Reservation:
    made = await ledger.reserve([LIMIT], amount, HOLD)
    assert isinstance(made, Reservation), made
    return made


async def day_report(ledger: RedisLedger):
    [day, _month] = await ledger.report([LIMIT])
    return day


async def test_a_process_only_ever_refused_falls_back_from_the_spend_its_refusal_carried(redis_url):
    spender, spender_link = flaky_ledger(redis_url)
    refused, refused_link = flaky_ledger(redis_url)
    await spender.settle(await granted(spender, 0.95), 0.95, 9_500)
    assert isinstance(await refused.reserve([LIMIT], 0.1, HOLD), Refusal)  # its only reply from Redis
    spender_link.down = refused_link.down = True
    # Redis is away: the refused process knows 0.95 is spent and holds what remained, not a fresh dollar.
    refusal = await refused.reserve([LIMIT], 0.1, HOLD)
    assert isinstance(refusal, Refusal) and refusal.spent_usd == pytest.approx(0.95)
    assert (await granted(refused, 0.05)).fallback
    assert isinstance(await refused.reserve([LIMIT], 0.01, HOLD), Refusal)
    await spender.close()
    await refused.close()


async def test_spend_settled_while_redis_is_away_is_written_back_once_it_answers(redis_url):
    ledger, link = flaky_ledger(redis_url)
    await ledger.settle(await granted(ledger, 0.2), 0.2, 2_000)
    in_flight = await granted(ledger, 0.1)  # reserved in Redis, settled during the outage
    link.down = True
    await ledger.settle(in_flight, 0.1, 1_000, estimated_usd=0.1, estimated_tokens=1_000)
    during = await granted(ledger, 0.3)
    assert during.fallback
    await ledger.settle(during, 0.3, 3_000)
    day = await day_report(ledger)
    assert (day.source, day.spent_usd, day.tokens) == ("process", pytest.approx(0.6), 6_000)
    assert (day.pending_usd, day.pending_tokens) == (pytest.approx(0.4), 4_000)
    link.down = False
    day = await day_report(ledger)  # a report writes back first
    assert (day.source, day.spent_usd, day.tokens, day.pending_usd) == ("shared", pytest.approx(0.6), 6_000, 0.0)
    assert (day.estimated_usd, day.estimated_tokens) == (pytest.approx(0.1), 1_000)
    async with aioredis.Redis.from_url(redis_url) as raw:
        assert await raw.hmget(DAY_KEY, "spent", "tokens") == [b"600000000", b"6000"]
    assert (await day_report(ledger)).spent_usd == pytest.approx(0.6)  # written once, not per report
    assert link.write_backs_run == 1
    # The fallback now counts the 0.4 through the shared figure only: a second outage holds 0.4 more.
    link.down = True
    assert isinstance(await ledger.reserve([LIMIT], 0.41, HOLD), Refusal)
    assert (await granted(ledger, 0.4)).fallback
    await ledger.close()


async def test_a_reserve_or_settle_redis_runs_after_its_client_gave_up_does_nothing(redis_url):
    # A process clock a minute ahead of Redis' stands for every call Redis reaches only after its
    # client gave up (a hung Redis resumed): the client went on without it, so it must not count.
    late = [False]
    ledger = RedisLedger(Flaky(redis_url), timeout_seconds=2.0, clock=lambda: START, retry_after_seconds=0.0,
                         wall=lambda: time.time() - (60.0 if late[0] else 0.0))
    held_in_redis = await granted(ledger, 0.1)
    late[0] = True
    made_late = await granted(ledger, 0.2)
    assert made_late.fallback  # held in this process: Redis ran the reserve too late to hold anything
    await ledger.settle(held_in_redis, 0.1, 1_000)  # ran too late as well: kept for write-back
    await ledger.settle(made_late, 0.2, 2_000)
    day = await day_report(ledger)  # Redis answers: both written back, each once
    assert (day.source, day.spent_usd, day.tokens, day.pending_tokens) == ("shared", pytest.approx(0.3), 3_000, 0)
    async with aioredis.Redis.from_url(redis_url) as raw:
        assert await raw.hmget(DAY_KEY, "spent", "tokens") == [b"300000000", b"3000"]
        # The late reserve left no hold, and the write-back ended the one the late settle did not:
        # found expired, it would be charged a second time.
        assert await raw.zcard(HOLDS_KEY) == 0
    await ledger.close()


async def test_a_reserve_cut_by_this_process_stalling_is_not_held_against_redis(redis_url):
    ledger = RedisLedger(Flaky(redis_url), timeout_seconds=0.1, clock=lambda: START)
    await ledger.start()
    with redis.Redis.from_url(redis_url) as server:
        for _ in range(5):
            stall_the_next_call(0.3, [server])
            assert (await granted(ledger, 0.1)).fallback  # held in this process, as for any failure
    assert ledger.available  # five overruns, none Redis' doing: no back-off
    await ledger.close()


async def test_a_report_from_a_redis_that_lost_spend_says_its_figures_are_partial(redis_url):
    ledger, _ = flaky_ledger(redis_url)
    await ledger.settle(await granted(ledger, 0.2), 0.2, 2_000)
    assert not (await day_report(ledger)).partial
    async with aioredis.Redis.from_url(redis_url) as raw:
        await raw.flushall()  # as a Redis restarted without persistence
    day = await day_report(ledger)
    assert (day.source, day.spent_usd, day.partial) == ("shared", 0.0, True)
    await ledger.close()


async def test_a_write_back_whose_reply_was_lost_is_not_counted_twice(redis_url):
    ledger, link = flaky_ledger(redis_url)
    link.down = True
    await ledger.settle(await granted(ledger, 0.3), 0.3, 3_000)
    assert ledger.pending == {("deepinfra", "2025-03-10"): Spend(300_000_000, 3_000), ("deepinfra", "2025-03"): Spend(300_000_000, 3_000)}
    link.down, link.lose_write_back_reply = False, True
    # Redis runs the write-back and the reply is lost; the batch is kept and sent again under
    # the same id, which Redis has seen: it adds nothing the second time.
    day = await day_report(ledger)
    assert link.write_backs_run == 2 and ledger.pending == {}
    assert (day.spent_usd, day.tokens, day.pending_usd) == (pytest.approx(0.3), 3_000, 0.0)
    async with aioredis.Redis.from_url(redis_url) as raw:
        assert await raw.hget(DAY_KEY, "spent") == b"300000000"
    await ledger.close()


async def test_a_process_closing_after_an_outage_writes_back_first(redis_url):
    ledger, link = flaky_ledger(redis_url)
    link.down = True
    await ledger.settle(await granted(ledger, 0.3), 0.3, 3_000)
    link.down = False
    await ledger.close()
    async with aioredis.Redis.from_url(redis_url) as raw:
        assert await raw.hget(DAY_KEY, "tokens") == b"3000"


async def test_the_80_percent_warning_is_logged_once_across_processes_after_an_outage(redis_url, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.budget")
    first, first_link = flaky_ledger(redis_url)
    second, second_link = flaky_ledger(redis_url)
    first_link.down = second_link.down = True
    # Each process crosses the line on its own figures: neither says so, the shared ledger will.
    await first.settle(await granted(first, 0.85), 0.85, 1)
    await second.settle(await granted(second, 0.9), 0.9, 1)
    assert not [r for r in caplog.records if "line crossed" in r.getMessage()]
    first_link.down = second_link.down = False
    await first.report([LIMIT])
    await second.report([LIMIT])
    crossed = [r.getMessage() for r in caplog.records if "line crossed" in r.getMessage()]
    assert len(crossed) == 1 and "deepinfra day 2025-03-10" in crossed[0]
    await first.close()
    await second.close()


# --- the start-up check of the ledger's Redis


async def started_ledger_log(tmp_path, extra_args: list[str], caplog) -> list[logging.LogRecord]:
    caplog.set_level(logging.INFO, logger="gateway.budget")
    server = RedisServer(tmp_path, extra_args=extra_args)
    server.start()
    try:
        ledger = RedisLedger.from_url(server.url, timeout_seconds=2.0)
        await ledger.start()
        await ledger.close()
    finally:
        server.stop()
    return [r for r in caplog.records if r.name == "gateway.budget"]


async def test_start_warns_about_a_redis_that_evicts_and_keeps_nothing(tmp_path, caplog):
    records = await started_ledger_log(tmp_path, ["--maxmemory-policy", "allkeys-lru"], caplog)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "maxmemory-policy is allkeys-lru" in warnings[0] and "noeviction" in warnings[0]
    assert "no persistence" in warnings[1] and "appendonly yes" in warnings[1]


async def test_start_is_quiet_about_a_persistent_non_evicting_redis(tmp_path, caplog):
    records = await started_ledger_log(tmp_path, ["--appendonly", "yes", "--maxmemory-policy", "noeviction"], caplog)
    assert [r.getMessage() for r in records if r.levelno >= logging.INFO] == []


async def test_a_redis_that_refuses_config_get_is_tolerated(tmp_path, caplog):
    records = await started_ledger_log(tmp_path, ["--rename-command", "CONFIG", ""], caplog)
    assert [r.levelno for r in records] == [logging.INFO]
    assert "could not read its eviction and persistence settings" in records[0].getMessage()
