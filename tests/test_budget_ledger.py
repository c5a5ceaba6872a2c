"""One contract for every spend ledger: memory, Redis (a real redis-server), a real Redis Cluster and fakeredis when it can run Lua."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
import redis.asyncio as aioredis

from gateway.budget import (
    GATEWAY_SCOPE,
    BudgetAlert,
    Ledger,
    Limit,
    MemoryLedger,
    RedisLedger,
    Refusal,
    Reservation,
    TokenEstimator,
    WindowReport,
    unheld_reservation,
)
from gateway.budget.base import windows_of
from gateway.budget.redis import window_keys
from gateway.redisio.commands import ClientCommands, DirectConnections
from tests.support.hung_server import hung_server
from tests.support.redis_server import CLUSTER, REDIS, RedisServer, own_redis_server

START = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
HOLD = 30.0


class FakeClock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


pytest_plugins = ["tests.support.redis_cluster"]


async def held(ledger: Ledger, limits: list[Limit], amount_usd: float) -> Reservation:
    """A reservation the test needs granted: a refusal fails the test here, naming it."""
    made = await ledger.reserve(limits, amount_usd, HOLD)
    assert isinstance(made, Reservation), made
    return made


@pytest.fixture(params=["memory", REDIS, "fakeredis", CLUSTER])
async def ledger(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        built: Ledger = MemoryLedger(clock=clock)
    elif request.param in ("redis", "redis-cluster"):
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
        built = RedisLedger.from_url(url, timeout_seconds=2.0, clock=clock)
    else:
        if importlib.util.find_spec("lupa") is None:
            pytest.skip("fakeredis runs Lua only with lupa installed")
        # One connection: redis-py's default pool would refuse the concurrency test's 200 at once.
        client = fakeredis.FakeAsyncRedis(single_connection_client=True)
        built = RedisLedger(ClientCommands(client), timeout_seconds=2.0, clock=clock)
    yield built
    if isinstance(built, RedisLedger):
        # Every contract test must have run in Redis itself, not in the fallback.
        assert built.available
    await built.close()


def by_window(reports: list[WindowReport]) -> dict[tuple[str, str], WindowReport]:
    return {(report.scope, report.period): report for report in reports}


PROVIDER = Limit("deepinfra", daily_usd=1.0, monthly_usd=10.0)
GATEWAY = Limit(GATEWAY_SCOPE, daily_usd=5.0, monthly_usd=None)


async def test_a_reservation_within_every_limit_is_held_in_every_window(ledger: Ledger):
    reservation = await held(ledger, [PROVIDER, GATEWAY], 0.3)
    assert isinstance(reservation, Reservation)
    assert reservation.scopes == ("deepinfra", GATEWAY_SCOPE)
    assert (reservation.day, reservation.month, reservation.amount_usd) == ("2025-03-10", "2025-03", 0.3)
    assert reservation.expires_at == START + timedelta(seconds=HOLD)
    reports = await ledger.report([PROVIDER, GATEWAY])
    assert [(r.scope, r.period, r.window) for r in reports] == [
        ("deepinfra", "day", "2025-03-10"), ("deepinfra", "month", "2025-03"),
        (GATEWAY_SCOPE, "day", "2025-03-10"), (GATEWAY_SCOPE, "month", "2025-03"),
    ]
    assert [(r.reserved_usd, r.spent_usd, r.tokens) for r in reports] == [(0.3, 0.0, 0)] * 4


async def test_refused_when_any_window_would_overflow_and_nothing_is_held_anywhere(ledger: Ledger):
    provider, gateway = Limit("deepinfra", 1.0, None), Limit(GATEWAY_SCOPE, 0.5, None)
    assert isinstance(await ledger.reserve([provider, gateway], 0.4, HOLD), Reservation)
    refusal = await ledger.reserve([provider, gateway], 0.2, HOLD)
    assert refusal == Refusal(
        scope=GATEWAY_SCOPE, period="day", window="2025-03-10", limit_usd=0.5, spent_usd=0.0, reserved_usd=0.4,
        requested_usd=0.2, resets_at=datetime(2025, 3, 11, tzinfo=UTC),
    )
    reports = by_window(await ledger.report([provider, gateway]))
    assert reports["deepinfra", "day"].reserved_usd == 0.4  # the refused 0.2 was held nowhere
    assert reports["deepinfra", "month"].reserved_usd == 0.4
    assert reports[GATEWAY_SCOPE, "day"].reserved_usd == 0.4
    # Another provider that fits everywhere still gets through the same gateway budget.
    assert isinstance(await ledger.reserve([Limit("fireworks", 1.0, None), gateway], 0.1, HOLD), Reservation)


async def test_a_monthly_limit_refuses_too_and_the_later_reset_is_reported(ledger: Ledger, clock: FakeClock):
    limit = Limit("deepinfra", daily_usd=1.0, monthly_usd=1.0)
    reservation = await held(ledger, [limit], 1.0)
    await ledger.settle(reservation, 1.0, 20_000)
    refusal = await ledger.reserve([limit], 0.01, HOLD)
    assert isinstance(refusal, Refusal)
    # Day and month are both full: the call cannot go before the month resets.
    assert (refusal.period, refusal.resets_at) == ("month", datetime(2025, 4, 1, tzinfo=UTC))
    clock.advance(days=1)
    refusal = await ledger.reserve([limit], 0.01, HOLD)
    assert isinstance(refusal, Refusal) and refusal.period == "month" and refusal.spent_usd == 1.0


async def test_settle_turns_the_hold_into_the_real_cost_and_tokens(ledger: Ledger):
    reservation = await held(ledger, [PROVIDER, GATEWAY], 0.3)
    assert await ledger.settle(reservation, 0.25, 5_000) == ()
    reports = by_window(await ledger.report([PROVIDER, GATEWAY]))
    day = reports["deepinfra", "day"]
    assert (day.spent_usd, day.reserved_usd, day.tokens, day.remaining_usd) == (0.25, 0.0, 5_000, 0.75)
    assert reports[GATEWAY_SCOPE, "month"].spent_usd == 0.25
    # A second settle of the same reservation adds its cost but cannot free the hold twice.
    other = await held(ledger, [PROVIDER], 0.5)
    await ledger.settle(reservation, 0.05, 100)
    day = by_window(await ledger.report([PROVIDER]))["deepinfra", "day"]
    assert (day.spent_usd, day.reserved_usd, day.tokens) == (0.3, 0.5, 5_100)
    await ledger.release(other)


async def test_release_frees_the_hold(ledger: Ledger):
    limit = Limit("deepinfra", 1.0, None)
    reservation = await held(ledger, [limit], 1.0)
    assert isinstance(await ledger.reserve([limit], 0.01, HOLD), Refusal)
    await ledger.release(reservation)
    day = by_window(await ledger.report([limit]))["deepinfra", "day"]
    assert (day.spent_usd, day.reserved_usd, day.tokens) == (0.0, 0.0, 0)
    assert isinstance(await ledger.reserve([limit], 1.0, HOLD), Reservation)


async def test_expired_holds_are_charged_at_what_they_held_as_estimated_spend(ledger: Ledger, clock: FakeClock):
    limit = Limit("deepinfra", 1.0, 5.0)
    abandoned = await ledger.reserve([limit], 0.6, HOLD, tokens=600)  # its holder dies and never settles
    assert isinstance(abandoned, Reservation)
    clock.advance(seconds=HOLD - 1)
    assert isinstance(await ledger.reserve([limit], 0.5, HOLD), Refusal)
    assert by_window(await ledger.report([limit]))["deepinfra", "day"].reserved_usd == 0.6
    clock.advance(seconds=1)
    # Its provider may have billed the call all the same: the ledger errs high, never low.
    day = by_window(await ledger.report([limit]))["deepinfra", "day"]
    assert (day.spent_usd, day.tokens, day.estimated_usd, day.estimated_tokens) == (0.6, 600, 0.6, 600)
    assert day.reserved_usd == 0.0
    assert isinstance(await ledger.reserve([limit], 0.5, HOLD), Refusal)
    fresh = await held(ledger, [limit], 0.2)
    # A late settle of the expired hold replaces that estimate with what the call cost.
    await ledger.settle(abandoned, 0.5, 500)
    day = by_window(await ledger.report([limit]))["deepinfra", "day"]
    assert (day.spent_usd, day.tokens, day.estimated_tokens, day.reserved_usd) == (0.5, 500, 0, 0.2)
    await ledger.release(fresh)
    assert isinstance(await ledger.reserve([limit], 0.5, HOLD), Reservation)


async def test_a_late_release_of_an_expired_hold_takes_its_charge_back(ledger: Ledger, clock: FakeClock):
    limit = Limit("deepinfra", 1.0, None)
    slow = await ledger.reserve([limit], 0.4, HOLD, tokens=400)
    assert isinstance(slow, Reservation)
    clock.advance(seconds=HOLD)
    assert by_window(await ledger.report([limit]))["deepinfra", "day"].spent_usd == 0.4
    assert isinstance(await ledger.reserve([limit], 0.7, HOLD), Refusal)  # counted, as it would be by now
    await ledger.release(slow)  # no upstream call answered after all
    day = by_window(await ledger.report([limit]))["deepinfra", "day"]
    assert (day.spent_usd, day.tokens, day.estimated_usd) == (0.0, 0, 0.0)


async def test_the_day_rolls_over_at_utc_midnight(ledger: Ledger, clock: FakeClock):
    clock.now = datetime(2025, 3, 10, 23, 59, 59, tzinfo=UTC)
    limit = Limit("deepinfra", daily_usd=1.0, monthly_usd=10.0)
    await ledger.settle(await held(ledger, [limit], 1.0), 1.0, 10_000)
    refusal = await ledger.reserve([limit], 0.5, HOLD)
    assert isinstance(refusal, Refusal)
    assert (refusal.period, refusal.resets_at) == ("day", datetime(2025, 3, 11, tzinfo=UTC))
    clock.advance(seconds=1)
    assert isinstance(await ledger.reserve([limit], 0.5, HOLD), Reservation)
    reports = by_window(await ledger.report([limit]))
    day, month = reports["deepinfra", "day"], reports["deepinfra", "month"]
    assert (day.window, day.spent_usd, day.reserved_usd, day.tokens) == ("2025-03-11", 0.0, 0.5, 0)
    assert (month.window, month.spent_usd, month.reserved_usd, month.tokens) == ("2025-03", 1.0, 0.5, 10_000)


async def test_the_month_rolls_over_from_january_31_to_february_1(ledger: Ledger, clock: FakeClock):
    clock.now = datetime(2025, 1, 31, 23, 30, tzinfo=UTC)
    limit = Limit("deepinfra", daily_usd=None, monthly_usd=2.0)
    await ledger.settle(await held(ledger, [limit], 2.0), 2.0, 1)
    refusal = await ledger.reserve([limit], 0.01, HOLD)
    assert isinstance(refusal, Refusal)
    assert (refusal.period, refusal.window, refusal.resets_at) == ("month", "2025-01", datetime(2025, 2, 1, tzinfo=UTC))
    clock.now = datetime(2025, 2, 1, tzinfo=UTC)
    reservation = await held(ledger, [limit], 2.0)
    assert isinstance(reservation, Reservation) and (reservation.day, reservation.month) == ("2025-02-01", "2025-02")
    month = by_window(await ledger.report([limit]))["deepinfra", "month"]
    assert (month.spent_usd, month.reserved_usd, month.resets_at) == (0.0, 2.0, datetime(2025, 3, 1, tzinfo=UTC))


async def test_the_year_rolls_over_from_december_31_to_january_1(ledger: Ledger, clock: FakeClock):
    clock.now = datetime(2025, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    limit = Limit("deepinfra", daily_usd=1.0, monthly_usd=1.0)
    await ledger.settle(await held(ledger, [limit], 1.0), 1.0, 1)
    refusal = await ledger.reserve([limit], 1.0, HOLD)
    assert isinstance(refusal, Refusal) and refusal.resets_at == datetime(2026, 1, 1, tzinfo=UTC)
    clock.now = datetime(2026, 1, 1, tzinfo=UTC)
    reservation = await held(ledger, [limit], 1.0)
    assert isinstance(reservation, Reservation) and (reservation.day, reservation.month) == ("2026-01-01", "2026-01")
    reports = await ledger.report([limit])
    assert [(r.window, r.resets_at) for r in reports] == [
        ("2026-01-01", datetime(2026, 1, 2, tzinfo=UTC)), ("2026-01", datetime(2026, 2, 1, tzinfo=UTC)),
    ]


async def test_spend_lands_in_the_windows_the_call_was_reserved_in(ledger: Ledger, clock: FakeClock):
    clock.now = datetime(2025, 3, 31, 23, 59, 58, tzinfo=UTC)
    limit = Limit("deepinfra", 1.0, 1.0)
    reservation = await held(ledger, [limit], 0.5)
    clock.advance(seconds=5)  # the call finishes in April
    await ledger.settle(reservation, 0.4, 800)
    reports = await ledger.report([limit])
    assert [(r.window, r.spent_usd, r.reserved_usd) for r in reports] == [
        ("2025-04-01", 0.0, 0.0), ("2025-04", 0.0, 0.0),
    ]
    clock.now = datetime(2025, 3, 31, 23, 59, 59, tzinfo=UTC)
    reports = await ledger.report([limit])
    assert [(r.window, r.spent_usd, r.tokens) for r in reports] == [("2025-03-31", 0.4, 800), ("2025-03", 0.4, 800)]


async def test_reports_give_every_figure_and_track_unlimited_windows(ledger: Ledger):
    provider, gateway = Limit("deepinfra", 2.0, 20.0), Limit(GATEWAY_SCOPE, None, None)
    await ledger.settle(await held(ledger, [provider, gateway], 0.6), 0.5, 12_345)
    await ledger.reserve([provider, gateway], 0.25, HOLD)
    reports = by_window(await ledger.report([provider, gateway, Limit("idle", 1.0, None)]))
    day = reports["deepinfra", "day"]
    assert (day.tokens, day.spent_usd, day.reserved_usd) == (12_345, 0.5, 0.25)
    assert (day.limit_usd, day.remaining_usd) == (2.0, 1.25)
    assert day.resets_at == datetime(2025, 3, 11, tzinfo=UTC) and not day.exhausted
    month = reports["deepinfra", "month"]
    assert (month.limit_usd, month.remaining_usd, month.resets_at) == (20.0, 19.25, datetime(2025, 4, 1, tzinfo=UTC))
    unlimited = reports[GATEWAY_SCOPE, "month"]
    assert (unlimited.tokens, unlimited.spent_usd, unlimited.reserved_usd) == (12_345, 0.5, 0.25)
    assert (unlimited.limit_usd, unlimited.remaining_usd, unlimited.exhausted) == (None, None, False)
    idle = reports["idle", "day"]
    assert (idle.tokens, idle.spent_usd, idle.reserved_usd, idle.remaining_usd) == (0, 0.0, 0.0, 1.0)


async def test_an_exhausted_window_reports_nothing_remaining(ledger: Ledger):
    limit = Limit("deepinfra", 1.0, None)
    await ledger.settle(await held(ledger, [limit], 0.9), 1.2, 30_000)  # the estimate ran short
    day = by_window(await ledger.report([limit]))["deepinfra", "day"]
    assert (day.spent_usd, day.remaining_usd, day.exhausted) == (1.2, 0.0, True)


async def test_the_80_percent_alert_fires_once_per_window(ledger: Ledger, clock: FakeClock, caplog):
    limit = Limit("deepinfra", daily_usd=1.0, monthly_usd=100.0)
    caplog.set_level(logging.WARNING, logger="gateway.budget")
    assert await ledger.settle(await held(ledger, [limit], 0.5), 0.5, 1) == ()
    assert await ledger.settle(await held(ledger, [limit], 0.2), 0.29, 1) == ()
    alerts = await ledger.settle(await held(ledger, [limit], 0.2), 0.01, 1)
    assert alerts == (BudgetAlert("deepinfra", "day", "2025-03-10", limit_usd=1.0, spent_usd=0.8, fraction=0.8),)
    assert await ledger.settle(await held(ledger, [limit], 0.1), 0.1, 1) == ()
    warnings = [r for r in caplog.records if r.name == "gateway.budget" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "deepinfra day 2025-03-10" in warnings[0].getMessage()
    clock.advance(days=1)  # a new window can cross again
    alerts = await ledger.settle(await held(ledger, [limit], 0.9), 0.9, 1)
    assert [(a.period, a.window) for a in alerts] == [("day", "2025-03-11")]


async def test_the_part_the_gateway_estimated_is_kept_apart(ledger: Ledger):
    await ledger.settle(await held(ledger, [PROVIDER, GATEWAY], 0.3), 0.25, 5_000, estimated_usd=0.1, estimated_tokens=2_000)
    await ledger.settle(await held(ledger, [PROVIDER, GATEWAY], 0.1), 0.05, 100)  # all of it reported
    # An estimate above the whole (a caller's slip) counts as all of it, never more.
    await ledger.settle(await held(ledger, [PROVIDER, GATEWAY], 0.1), 0.01, 10, estimated_usd=5.0, estimated_tokens=99)
    for report in await ledger.report([PROVIDER, GATEWAY]):
        assert (report.tokens, report.estimated_tokens, report.reported_tokens) == (5_110, 2_010, 3_100)
        assert report.spent_usd == pytest.approx(0.31)
        assert (report.estimated_usd, report.reported_usd) == (pytest.approx(0.11), pytest.approx(0.2))


async def test_200_concurrent_reserves_fill_the_limit_exactly(ledger: Ledger):
    limit = Limit("deepinfra", 1.0, None)
    results = await asyncio.gather(*(ledger.reserve([limit], 0.01, HOLD) for _ in range(200)))
    assert sum(isinstance(result, Reservation) for result in results) == 100
    assert sum(isinstance(result, Refusal) for result in results) == 100
    day = by_window(await ledger.report([limit]))["deepinfra", "day"]
    assert (day.reserved_usd, day.remaining_usd) == (1.0, 0.0)


async def test_bad_arguments_are_programming_errors(ledger: Ledger):
    with pytest.raises(ValueError, match="once"):
        await ledger.reserve([Limit("a", 1.0, None), Limit("a", 2.0, None)], 0.1, HOLD)
    with pytest.raises(ValueError, match="amount_usd"):
        await ledger.reserve([Limit("a", 1.0, None)], -0.1, HOLD)
    with pytest.raises(ValueError, match="hold_seconds"):
        await ledger.reserve([Limit("a", 1.0, None)], 0.1, 0)


async def test_a_settle_after_its_day_was_dropped_counts_where_reports_read(clock: FakeClock):
    """The in-process ledger finds a reservation's windows once per (limits, day, month); dropping a day's
    figures after its retention must forget that too, or a late settle would count where no report reads."""
    ledger = MemoryLedger(clock=clock)
    limits = [Limit("deepinfra")]  # unlimited: settled without a hold, as a miss with no budget set
    day = clock.now
    await ledger.settle(unheld_reservation(limits, day), 0.001, 100)
    clock.advance(days=40)  # past DAY_RETENTION: the next reserve drops that day's figures
    await held(ledger, [Limit("fireworks", daily_usd=1.0)], 0.1)
    clock.now = day  # a clock stepped back (or a call settled that late)
    await ledger.settle(unheld_reservation(limits, day), 0.002, 200)
    reports = by_window(await ledger.report(limits))
    assert (reports[("deepinfra", "day")].spent_usd, reports[("deepinfra", "day")].tokens) == (0.002, 200)
    assert reports[("deepinfra", "month")].spent_usd == pytest.approx(0.003)  # the month's figures were kept


# --- Redis: shared by instances, surviving restarts, and never a reason to fail a request


async def test_two_instances_share_one_limit_exactly(redis_url, clock: FakeClock):
    first = RedisLedger.from_url(redis_url, timeout_seconds=2.0, clock=clock)
    second = RedisLedger.from_url(redis_url, timeout_seconds=2.0, clock=clock)
    limit = Limit("deepinfra", 1.0, None)
    results = await asyncio.gather(*(
        (first if i % 2 else second).reserve([limit], 0.01, HOLD) for i in range(200)
    ))
    assert sum(isinstance(result, Reservation) for result in results) == 100
    assert first.available and second.available  # decided by Redis, not by a fallback
    await first.close()
    await second.close()


async def test_the_ledger_survives_a_restart_and_an_instance_that_died_holding(redis_url, clock: FakeClock):
    limit = Limit("deepinfra", 1.0, None)
    before = RedisLedger.from_url(redis_url, timeout_seconds=2.0, clock=clock)
    await before.settle(await held(before, [limit], 0.5), 0.5, 7_000)
    assert isinstance(await before.reserve([limit], 0.5, HOLD), Reservation)  # then the process is killed
    await before.close()
    after = RedisLedger.from_url(redis_url, timeout_seconds=2.0, clock=clock)
    day = by_window(await after.report([limit]))["deepinfra", "day"]
    assert (day.spent_usd, day.reserved_usd, day.tokens) == (0.5, 0.5, 7_000)
    assert isinstance(await after.reserve([limit], 0.1, HOLD), Refusal)
    clock.advance(seconds=HOLD)
    # The dead instance's hold is charged at what it held: its provider may have billed the call.
    day = by_window(await after.report([limit]))["deepinfra", "day"]
    assert (day.spent_usd, day.reserved_usd, day.estimated_usd) == (1.0, 0.0, 0.5)
    assert isinstance(await after.reserve([limit], 0.1, HOLD), Refusal)
    await after.close()


async def test_the_alert_fires_once_across_instances(redis_url, clock: FakeClock):
    first = RedisLedger.from_url(redis_url, timeout_seconds=2.0, clock=clock)
    second = RedisLedger.from_url(redis_url, timeout_seconds=2.0, clock=clock)
    limit = Limit("deepinfra", 1.0, None)
    assert len(await first.settle(await held(first, [limit], 0.9), 0.9, 1)) == 1
    assert await second.settle(await held(second, [limit], 0.05), 0.05, 1) == ()
    await first.close()
    await second.close()


async def test_redis_layout_one_hash_tag_and_windows_expire_after_weeks_and_months(redis_url, clock: FakeClock):
    ledger = RedisLedger.from_url(redis_url, timeout_seconds=2.0, clock=clock)
    limits = [Limit("deepinfra", 1.0, None), Limit(GATEWAY_SCOPE, None, 10.0)]
    reservation = await held(ledger, limits, 0.125)
    assert isinstance(reservation, Reservation)
    raw = aioredis.Redis.from_url(redis_url)
    windows = windows_of(limits, "2025-03-10", "2025-03")
    expected = {key for window in windows for key in window_keys(window)}
    assert {key if isinstance(key, str) else key.decode() for key in await raw.keys("*")} == expected
    assert all(key.startswith("rb:{budget}:") for key in expected)
    assert await raw.hgetall("rb:{budget}:t:2025-03-10:deepinfra") == {b"reserved": b"125000000"}
    assert await raw.zrange("rb:{budget}:h:2025-03-10:deepinfra", 0, -1, withscores=True) == [
        (f"{reservation.id}:125000000:0".encode(), (START + timedelta(seconds=HOLD)).timestamp() * 1000)
    ]
    day_ttl = await raw.ttl("rb:{budget}:t:2025-03-10:deepinfra")
    assert day_ttl == pytest.approx((timedelta(hours=12) + timedelta(weeks=5)).total_seconds(), abs=5)
    month_ttl = await raw.ttl("rb:{budget}:h:2025-03:@gateway")
    assert month_ttl == pytest.approx((timedelta(days=21, hours=12) + timedelta(days=100)).total_seconds(), abs=5)
    await ledger.settle(reservation, 0.1, 2_000)
    assert await raw.hgetall("rb:{budget}:t:2025-03:@gateway") == {
        b"reserved": b"0", b"spent": b"100000000", b"tokens": b"2000",
    }
    assert await raw.exists("rb:{budget}:h:2025-03:@gateway") == 0  # the last hold is gone
    await raw.aclose()
    await ledger.close()


async def test_a_refusal_on_a_fresh_window_writes_no_key_without_a_ttl(redis_url, clock: FakeClock):
    ledger = RedisLedger.from_url(redis_url, timeout_seconds=2.0, clock=clock)
    assert isinstance(await ledger.reserve([Limit("deepinfra", 0.0, None)], 0.01, HOLD), Refusal)
    raw = aioredis.Redis.from_url(redis_url)
    assert await raw.keys("*") == []
    await raw.aclose()
    await ledger.close()


async def test_redis_down_falls_back_to_memory_and_still_enforces(unused_tcp_port, clock: FakeClock, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.budget")
    url = f"redis://127.0.0.1:{unused_tcp_port}/0"
    ledger = RedisLedger.from_url(url, timeout_seconds=0.2, clock=clock, retry_after_seconds=0.0)
    limit = Limit("deepinfra", 1.0, None)
    first = await held(ledger, [limit], 0.6)
    assert isinstance(first, Reservation) and first.fallback
    assert isinstance(await ledger.reserve([limit], 0.6, HOLD), Refusal)
    await ledger.settle(first, 0.5, 900)
    day = by_window(await ledger.report([limit]))["deepinfra", "day"]
    assert (day.spent_usd, day.reserved_usd, day.tokens) == (0.5, 0.0, 900)
    assert isinstance(await ledger.reserve([limit], 0.6, HOLD), Refusal)
    # Redis was tried on every call (no back-off here), yet warned about once.
    warnings = [r for r in caplog.records if r.name == "gateway.budget"]
    assert len(warnings) == 1 and "per process" in warnings[0].getMessage()
    await ledger.close()


@own_redis_server
async def test_the_fallback_starts_from_the_spend_last_seen_in_redis(tmp_path, clock: FakeClock):
    server = RedisServer(tmp_path)
    server.start()
    ledger = RedisLedger.from_url(server.url, timeout_seconds=0.5, clock=clock)
    limit = Limit("deepinfra", 1.0, None)
    try:
        await ledger.settle(await held(ledger, [limit], 0.9), 0.9, 1)
        in_flight = await ledger.reserve([limit], 0.05, HOLD)
        assert isinstance(in_flight, Reservation) and not in_flight.fallback
    finally:
        server.stop()
    # Redis is gone: the in-flight call's cost is kept here, and the 0.9 seen in Redis still counts.
    await ledger.settle(in_flight, 0.05, 1)
    refusal = await ledger.reserve([limit], 0.1, HOLD)
    assert isinstance(refusal, Refusal) and refusal.spent_usd == pytest.approx(0.95)
    assert isinstance(await ledger.reserve([limit], 0.05, HOLD), Reservation)
    assert not ledger.available  # three failures in a row: Redis is left alone for a moment
    await ledger.close()


@own_redis_server
async def test_redis_is_used_again_once_it_is_back(tmp_path, clock: FakeClock):
    server = RedisServer(tmp_path)
    now = [0.0]
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    ledger = RedisLedger(DirectConnections(client, 4), timeout_seconds=0.5, clock=clock, retry_after_seconds=1.0,
                         monotonic=lambda: now[0])
    limit = Limit("deepinfra", 1.0, None)
    for _ in range(3):
        assert (await held(ledger, [limit], 0.1)).fallback  # not started yet
    assert not ledger.available
    server.start()
    try:
        now[0] += 1.5
        reservation = await held(ledger, [limit], 0.2)
        assert isinstance(reservation, Reservation) and not reservation.fallback
        await ledger.settle(reservation, 0.2, 10)
        with server.client() as raw:
            assert raw.hget("rb:{budget}:t:2025-03-10:deepinfra", "spent") == b"200000000"
    finally:
        await ledger.close()
        server.stop()


async def test_hung_redis_is_bounded_by_the_timeout(clock: FakeClock):
    async with hung_server() as port:
        ledger = RedisLedger.from_url(f"redis://127.0.0.1:{port}/0", timeout_seconds=0.1, clock=clock)
        started = time.monotonic()
        reservation = await held(ledger, [Limit("deepinfra", 1.0, None)], 0.1)
        elapsed = time.monotonic() - started
        await ledger.close()
    assert isinstance(reservation, Reservation) and reservation.fallback
    assert elapsed < 5  # bounded, not hanging: the figure itself is not a performance claim


# --- the token estimator


def test_the_estimator_starts_at_four_chars_per_token_and_rounds_up():
    estimator = TokenEstimator()
    assert estimator.chars_per_token == 4.0
    assert [estimator.estimate_tokens(chars) for chars in (400, 401, 0)] == [100, 101, 0]


def test_the_estimator_learns_a_providers_ratio():
    estimator = TokenEstimator()
    for _ in range(100):
        estimator.observe(chars=3_000, tokens=1_000)
    assert estimator.chars_per_token == pytest.approx(3.0, abs=1e-3)
    assert estimator.estimate_tokens(3_000) == pytest.approx(1_000, abs=1)


def test_one_odd_usage_figure_cannot_wreck_the_estimate():
    estimator = TokenEstimator(weight=0.1, min_ratio=0.5, max_ratio=12.0)
    estimator.observe(chars=1_000_000, tokens=1)  # a provider that says one token
    assert estimator.chars_per_token == pytest.approx(4.0 + 0.1 * (12.0 - 4.0))
    estimator = TokenEstimator(weight=0.1, min_ratio=0.5, max_ratio=12.0)
    estimator.observe(chars=10, tokens=10_000_000)
    assert estimator.chars_per_token == pytest.approx(4.0 - 0.1 * (4.0 - 0.5))
    for _ in range(1_000):
        estimator.observe(chars=10, tokens=10_000_000)
    assert estimator.chars_per_token == pytest.approx(0.5)  # never beyond the plausible range


def test_calls_without_usage_teach_nothing():
    estimator = TokenEstimator()
    estimator.observe(chars=5_000, tokens=0)
    estimator.observe(chars=0, tokens=10)
    assert estimator.chars_per_token == 4.0


def test_an_implausible_starting_point_is_refused():
    with pytest.raises(ValueError):
        TokenEstimator(chars_per_token=100.0)
