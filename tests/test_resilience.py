"""The router's resilience building blocks, driven by a fake clock and a seeded rng: no sleeping, no I/O."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.errors import is_transient_status
from gateway.resilience.breaker import BreakerConfig, CircuitBreaker
from gateway.resilience.latency import LatencyTracker
from gateway.resilience.lexical import lexical_scores
from gateway.resilience.retry import (
    RetryBudget,
    full_jitter_backoff,
    parse_retry_after,
)
from gateway.resilience.tokens import forms, stem, tokenize
from gateway.resilience.window import SlidingCounts


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- sliding window ---------------------------------------------------------------------------


def test_sliding_counts_forget_events_a_window_later(clock: FakeClock) -> None:
    counts = SlidingCounts(("calls",), window_seconds=10, clock=clock)
    counts.add("calls", 3)
    clock.advance(5)
    counts.add("calls")
    assert counts.total("calls") == 4
    clock.advance(5.5)  # the first three are now more than a window old
    assert counts.total("calls") == 1
    clock.advance(10)
    assert counts.total("calls") == 0


def test_sliding_counts_reuse_slots_without_leaking_old_counts(clock: FakeClock) -> None:
    counts = SlidingCounts(("calls",), window_seconds=1, clock=clock, buckets=4)
    for _ in range(100):  # wraps the ring many times
        clock.advance(0.25)
        counts.add("calls")
    assert counts.total("calls") == 4  # one per bucket, and a window is four buckets
    clock.advance(0.25)
    assert counts.total("calls") == 3


# --- circuit breaker --------------------------------------------------------------------------


def breaker(clock: FakeClock, **overrides: float) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(**overrides), clock=clock)  # type: ignore[arg-type]


def test_breaker_opens_after_consecutive_failures(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=3, min_calls=100)
    for _ in range(2):
        b.record_failure("503")
    assert b.state == "closed" and b.allow()
    b.record_failure("timeout")
    assert b.state == "open"
    assert not b.allow()
    status = b.status()
    assert status.opened_at == clock.now
    assert status.last_failure == "timeout"
    assert status.seconds_until_probe == pytest.approx(15.0)


def test_breaker_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=3, min_calls=100)
    for _ in range(10):
        b.record_failure("503")
        b.record_failure("503")
        b.record_success()
    assert b.state == "closed"


def test_breaker_opens_on_error_rate_only_with_enough_calls(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=100, error_rate=0.5, min_calls=10, window_seconds=30)
    b.record_failure("503")  # 1 of 1 failed: a 100 % rate, but far too few calls to judge
    assert b.state == "closed"
    for _ in range(3):
        b.record_success()
        b.record_failure("503")
    assert b.state == "closed"  # 4 of 7
    b.record_success()
    b.record_success()
    assert b.state == "closed"  # 4 of 9: still under min_calls
    b.record_failure("503")  # 5 of 10 = 0.5
    assert b.state == "open"


def test_breaker_does_not_open_below_the_error_rate(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=100, error_rate=0.5, min_calls=10)
    for _ in range(50):
        b.record_success()
        b.record_success()
        b.record_failure("503")  # one in three
    assert b.state == "closed"


def test_breaker_error_rate_forgets_old_failures(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=100, error_rate=0.5, min_calls=10, window_seconds=30)
    for _ in range(4):
        b.record_failure("503")
        b.record_success()
    clock.advance(31)  # those 4 of 8 have left the window
    for _ in range(4):
        b.record_success()
    for _ in range(4):
        b.record_failure("503")
        b.record_success()
    assert b.state == "closed"  # 4 of 12 in the window, though 8 of 20 overall


def test_breaker_half_opens_after_cooldown_and_allows_one_probe(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=1, cooldown_seconds=15)
    b.record_failure("503")
    clock.advance(14.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.state == "half_open"
    assert b.allow()  # the probe
    assert not b.allow()
    assert not b.allow()
    assert b.state == "half_open"


def test_breaker_probe_success_closes(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=2, cooldown_seconds=15)
    b.record_failure("503")
    b.record_failure("503")
    clock.advance(15)
    assert b.allow()
    b.record_success()
    assert b.state == "closed"
    assert b.status().opened_at is None
    assert b.allow() and b.allow()
    b.record_failure("503")  # the failures before the recovery no longer count
    assert b.state == "closed"


def test_breaker_probe_failure_reopens_for_another_cooldown(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=1, cooldown_seconds=15)
    b.record_failure("503")
    clock.advance(15)
    assert b.allow()
    b.record_failure("connection refused")
    assert b.state == "open"
    assert b.status().opened_at == clock.now
    assert b.status().last_failure == "connection refused"
    clock.advance(14)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()


def test_breaker_cancelled_probe_frees_the_slot(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=1, cooldown_seconds=15)
    b.record_failure("503")
    clock.advance(15)
    assert b.allow()
    b.record_cancelled()
    assert b.state == "half_open"
    assert b.allow()  # a new probe
    assert not b.allow()


def test_breaker_probe_that_never_reports_times_out(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=1, cooldown_seconds=15, probe_timeout_seconds=20)
    b.record_failure("503")
    clock.advance(15)
    assert b.allow()
    clock.advance(19)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()  # the lost probe's slot is taken over
    assert not b.allow()
    b.record_success()
    assert b.state == "closed"


def test_breaker_ignores_stragglers_while_open(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=1, cooldown_seconds=15)
    b.record_failure("503")
    b.record_success()  # a call let through before the breaker opened
    assert b.state == "open"
    b.record_cancelled()
    assert b.state == "open"


def test_breaker_cancel_while_closed_counts_nothing(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=2, min_calls=1, error_rate=0.5)
    b.record_success()
    for _ in range(5):
        b.record_cancelled()
    assert b.state == "closed"


def test_breaker_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(error_rate=0)
    with pytest.raises(ValueError):
        BreakerConfig(cooldown_seconds=-1)
    with pytest.raises(ValueError):
        BreakerConfig(consecutive_failures=0)


def test_breaker_defaults() -> None:
    config = BreakerConfig()
    assert (config.consecutive_failures, config.error_rate, config.window_seconds) == (5, 0.5, 30.0)
    assert (config.min_calls, config.cooldown_seconds) == (10, 15.0)


# --- backoff ----------------------------------------------------------------------------------


def test_full_jitter_stays_within_the_exponential_ceiling_and_cap() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(10.0, 0.1 * 2**attempt)
        waits = [full_jitter_backoff(attempt, 0.1, 10.0, rng) for _ in range(500)]
        assert all(0.0 <= wait < ceiling for wait in waits)
        assert max(waits) > 0.9 * ceiling  # spread over the whole range, not bunched low
        assert min(waits) < 0.1 * ceiling


def test_full_jitter_is_reproducible_and_survives_huge_attempts() -> None:
    first = [full_jitter_backoff(n, 0.2, 5.0, random.Random(3)) for n in range(5)]
    again = [full_jitter_backoff(n, 0.2, 5.0, random.Random(3)) for n in range(5)]
    assert first == again
    assert 0.0 <= full_jitter_backoff(5000, 0.2, 5.0, random.Random(1)) < 5.0
    with pytest.raises(ValueError):
        full_jitter_backoff(-1, 0.2, 5.0, random.Random(1))


# --- Retry-After ------------------------------------------------------------------------------

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("  7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Saturday, 01-Mar-25 12:01:00 GMT", 60.0),  # obsolete RFC 850
        ("Sat Mar  1 12:00:05 2025", 5.0),  # obsolete asctime
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),  # already past: retry now
    ],
)
def test_retry_after_reads_both_forms(header: str, expected: float) -> None:
    assert parse_retry_after(header, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "soon", "-5", "+5", "1e3", "12abc", "inf", "nan", "0x10", "Sat, 99 Foo 2025", "86400",
     "Sun, 02 Mar 2025 12:00:00 GMT"],
)
def test_retry_after_rejects_garbage_negative_and_absurd(header: str | None) -> None:
    assert parse_retry_after(header, NOW) is None


def test_retry_after_limit_is_adjustable() -> None:
    assert parse_retry_after("90", NOW, max_seconds=60) is None
    assert parse_retry_after("60", NOW, max_seconds=60) == 60.0


def test_retry_after_date_matches_formatted_wall_clock() -> None:
    now = time.time()
    header = format_datetime(datetime.fromtimestamp(int(now) + 42, tz=UTC), usegmt=True)
    assert parse_retry_after(header, now) == pytest.approx(42, abs=1)


# --- retry budget -----------------------------------------------------------------------------


def spend(budget: RetryBudget) -> int:
    """Retries the budget grants right now, taking each."""
    granted = 0
    while budget.can_retry():
        budget.record_retry()
        granted += 1
        assert granted < 10_000
    return granted


def test_retry_budget_floor_lets_a_quiet_gateway_retry(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.2, min_retries=3, window_seconds=10, clock=clock)
    assert spend(budget) == 3
    budget.record_call()
    assert not budget.can_retry()  # 0.2 of one call is no whole retry


def test_retry_budget_ratio_of_calls(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.2, min_retries=3, window_seconds=10, clock=clock)
    for _ in range(100):
        budget.record_call()
    assert spend(budget) == 23  # 20 % of 100, plus the floor of 3
    for _ in range(5):
        budget.record_call()
    assert spend(budget) == 1


def test_retry_budget_window_expiry(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.2, min_retries=0, window_seconds=10, clock=clock)
    for _ in range(50):
        budget.record_call()
    assert spend(budget) == 10
    clock.advance(11)  # calls and retries both leave the window
    assert not budget.can_retry()
    for _ in range(10):
        budget.record_call()
    assert spend(budget) == 2


def test_retry_budget_retries_age_out_with_their_calls(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_retries=2, window_seconds=10, clock=clock)
    assert spend(budget) == 2
    clock.advance(10.5)
    assert spend(budget) == 2


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_statuses(status: int) -> None:
    assert is_transient_status(status)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 408, 413, 422, 500, 501, 505])
def test_not_transient_statuses(status: int) -> None:
    assert not is_transient_status(status)


# --- tokens -----------------------------------------------------------------------------------


def test_tokenize_is_unicode_aware_and_stems_lightly() -> None:
    assert tokenize("Кошки, КОШКУ и кошкой!") == ["кошк", "кошк", "и", "кошк"]
    assert tokenize("Стол; стола; столами") == ["стол", "стол", "стол"]
    assert tokenize("Ёлка ёлки") == ["елк", "елк"]
    assert tokenize("Ranking queries: ranked passages, snake_case 42") == [
        "rank", "query", "rank", "passage", "snake", "case", "42"
    ]
    assert tokenize("class status") == ["class", "status"]
    assert tokenize("") == [] and tokenize(" ,.!— ") == []


def test_cjk_runs_are_read_as_character_bigrams_beside_other_words() -> None:
    """Chinese and Japanese write no spaces: one \\w+ run per sentence would never match another."""
    assert tokenize("通过MFC办理破产") == ["通过", "mfc", "办理", "理破", "破产"]
    assert tokenize("個人 破産 した") == ["個人", "破産", "した"]
    assert tokenize("한국어 문장") == ["한국", "국어", "문장"]
    assert tokenize("钱") == ["钱"]  # a lone character is itself
    assert tokenize("Кошки и 猫") == ["кошк", "и", "猫"]


def test_forms_are_exactly_the_words_with_that_stem() -> None:
    rng = random.Random(5)
    for alphabet in ("абвгдеийклмнорстуыьюя", "abcdegilnorsty"):
        for _ in range(800):
            word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
            assert word in forms(stem(word))
            assert all(stem(form) == stem(word) for form in forms(stem(word)))


# --- lexical ----------------------------------------------------------------------------------


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def test_bm25_ranks_the_relevant_english_passage_first() -> None:
    passages = [
        "The weather in Paris is mild in spring and the cafes are full.",
        "A circuit breaker stops calls to a failing service until it recovers.",
        "Rerankers score each query and passage pair; the gateway caches these scores.",
        "The cat sat on the mat.",
    ]
    scores = lexical_scores("how does a circuit breaker stop calling a failing service", passages)
    assert argmax(scores) == 1
    assert scores[3] == 0.0 or scores[3] < scores[1] / 4
    assert all(0.0 <= score <= 1.0 for score in scores)


def test_bm25_orders_a_chinese_request_by_overlap() -> None:
    """Issue 30: a Chinese sentence was one token, so every passage tied at 0."""
    passages = ["喀山的多功能中心早上八点开门。", "通过多功能中心办理庭外破产是免费的。", "今天天气很好。"]
    scores = lexical_scores("通过多功能中心办理破产需要多少钱", passages)
    assert scores[1] > scores[0] > scores[2] == 0.0


def test_bm25_ranks_the_relevant_russian_passage_first() -> None:
    passages = [
        "Москва — столица России, крупнейший город страны.",
        "Кошки спят до шестнадцати часов в сутки, а котята ещё дольше.",
        "Рецепт борща: свёкла, капуста, картофель и говядина.",
        "Собака — верный друг человека.",
    ]
    scores = lexical_scores("сколько часов в сутки спит кошка", passages)
    assert argmax(scores) == 1
    assert scores[2] == 0.0
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert argmax(lexical_scores("рецепт борща со свёклой", passages)) == 2
    assert argmax(lexical_scores("столица России", passages)) == 0


def test_bm25_prefers_rarer_terms_and_shorter_passages() -> None:
    passages = ["common rare", "common", "common", "common"]
    scores = lexical_scores("common rare", passages)
    assert argmax(scores) == 0
    short_and_long = lexical_scores("breaker", ["breaker open", "breaker " + "filler " * 50, "nothing"])
    assert short_and_long[0] > short_and_long[1] > short_and_long[2] == 0.0


def test_bm25_handles_empty_inputs_without_nan() -> None:
    assert lexical_scores("anything", []) == []
    assert lexical_scores("", ["a passage", "another"]) == [0.0, 0.0]
    assert lexical_scores("!!! ---", ["a passage"]) == [0.0]
    assert lexical_scores("query", ["", "", ""]) == [0.0, 0.0, 0.0]
    assert lexical_scores("query", ["no match here", ""]) == [0.0, 0.0]
    for scores in (
        lexical_scores("query", ["query", "", "query query"]),
        lexical_scores("same", ["same", "same", "same"]),  # a term in every passage
        lexical_scores("x", ["x"]),
    ):
        assert all(math.isfinite(score) and 0.0 <= score <= 1.0 for score in scores)
    assert lexical_scores("same", ["same", "same"])[0] > 0.0  # matching still counts for something


def test_bm25_is_deterministic_and_keeps_passage_order() -> None:
    passages = [f"passage {i} about {'gateways ' * (i % 4)}and caches" for i in range(50)]
    first = lexical_scores("gateway cache", passages)
    assert first == lexical_scores("gateway cache", passages)
    assert first == lexical_scores("cache gateway gateway", passages)  # repeats do not change weights
    assert len(first) == 50
    assert first[1] > first[0]  # "gateways" once beats no "gateways" at all


def test_bm25_is_fast_on_a_thousand_passages() -> None:
    rng = random.Random(11)
    letters = "абвгдежзиклмнопрстуфхцчшыэюя"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(5000)]
    passages = [" ".join(rng.choice(vocabulary) for _ in range(70))[:400] for _ in range(1000)]
    started = time.perf_counter()
    scores = lexical_scores(" ".join(vocabulary[:6]), passages)
    elapsed = time.perf_counter() - started
    assert len(scores) == 1000
    assert elapsed < 1.0  # ~25 ms measured; the bound only catches an accidental quadratic


# --- latency ----------------------------------------------------------------------------------


def test_latency_p95_waits_for_enough_samples() -> None:
    tracker = LatencyTracker(capacity=100, min_samples=20)
    for i in range(19):
        tracker.record(0.1 * i)
    assert tracker.p95() is None
    tracker.record(5.0)
    assert tracker.p95() == pytest.approx(1.8)  # nearest rank: the 19th of 20, the second slowest


def test_latency_p95_of_a_known_distribution() -> None:
    tracker = LatencyTracker(capacity=100, min_samples=10)
    for ms in random.Random(2).sample(range(1, 101), 100):
        tracker.record(ms / 1000)
    assert tracker.p95() == pytest.approx(0.095)
    assert tracker.quantile(0.5) == pytest.approx(0.050)
    assert tracker.quantile(1.0) == pytest.approx(0.100)


def test_latency_window_follows_recent_samples() -> None:
    tracker = LatencyTracker(capacity=50, min_samples=10)
    for _ in range(200):
        tracker.record(2.0)  # a slow spell
    for _ in range(50):
        tracker.record(0.2)  # recovered: the slow spell is forgotten
    assert len(tracker) == 50
    assert tracker.p95() == pytest.approx(0.2)


def test_latency_quantiles_match_the_window_sorted_afresh() -> None:
    # The tracker keeps its window sorted as samples come and go; the answer must be that of
    # sorting the last `capacity` samples, evictions and repeated values included.
    rng = random.Random(11)
    for capacity in (1, 5, 200):
        tracker = LatencyTracker(capacity=capacity, min_samples=1)
        seconds: list[float] = []
        pairs: list[int] = []
        for _ in range(1500):
            sample, size = rng.choice([0.01, 0.02, rng.random()]), rng.choice([0, 1, 20, 20, 1000])
            tracker.record(sample, size)
            seconds, pairs = [*seconds, sample][-capacity:], [*pairs, max(1, size)][-capacity:]
            for q in (0.5, 0.95, 1.0):
                assert tracker.quantile(q) == sorted(seconds)[math.ceil(q * len(seconds)) - 1]
            p99 = sorted(seconds)[math.ceil(0.99 * len(seconds)) - 1]
            typical = sorted(pairs)[len(pairs) // 2]
            assert tracker.slow_after(40, 3.0, 0.001) == max(0.001, p99 * 3.0 * max(1.0, 40 / typical))


def test_latency_rejects_impossible_samples() -> None:
    tracker = LatencyTracker()
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError):
            tracker.record(bad)
    with pytest.raises(ValueError):
        LatencyTracker(capacity=10, min_samples=11)


# --- attempt time, the panic rule, reconfiguration ---------------------------------------------

def test_attempt_gets_a_fair_share_when_nothing_is_known() -> None:
    from gateway.resilience.deadline import attempt_seconds

    assert attempt_seconds(2.0, own_limit=10.0, later_limits=[10.0]) == 1.0
    assert attempt_seconds(3.0, own_limit=10.0, later_limits=[10.0, 10.0]) == 1.0
    assert attempt_seconds(2.0, own_limit=10.0, later_limits=[]) == 2.0  # the last one gets all that is left


def test_attempt_leaves_a_known_fast_provider_only_what_it_needs() -> None:
    from gateway.resilience.deadline import attempt_seconds

    assert attempt_seconds(2.0, own_limit=10.0, later_limits=[0.2]) == pytest.approx(1.8)
    # Never less than a fair share, never more than its own limit, and no deadline: its own limit.
    assert attempt_seconds(2.0, own_limit=0.3, later_limits=[0.2]) == 0.3
    assert attempt_seconds(None, own_limit=0.3, later_limits=[0.2]) == 0.3
    assert attempt_seconds(-1.0, own_limit=10.0, later_limits=[1.0]) == 0.0


def test_slow_after_is_unknown_until_enough_answers_then_a_multiple_of_p99() -> None:
    tracker = LatencyTracker(min_samples=20)
    for _ in range(19):
        tracker.record(0.1, pairs=20)
    assert tracker.slow_after(20, multiple=4.0, floor_seconds=0.25) is None
    tracker.record(0.2, pairs=20)
    assert tracker.slow_after(20, multiple=4.0, floor_seconds=0.25) == pytest.approx(0.8)
    # A call five times the typical size may take five times as long before it counts as slow.
    assert tracker.slow_after(100, multiple=4.0, floor_seconds=0.25) == pytest.approx(4.0)
    assert tracker.slow_after(20, multiple=1.0, floor_seconds=0.5) == 0.5  # the floor


def test_a_panic_call_settles_the_breaker_like_a_probe(clock: FakeClock) -> None:
    cb = breaker(clock, consecutive_failures=1, cooldown_seconds=60)
    cb.record_failure("down")
    assert cb.state == "open" and not cb.allow()
    cb.admit_panic()
    cb.record_success()
    assert cb.state == "closed"

    cb.record_failure("down again")
    opened = cb.status().opened_at
    clock.advance(5)
    cb.admit_panic()
    cb.record_failure("still down")
    assert cb.state == "open" and cb.status().opened_at == opened + 5  # now the latest to have opened


def test_a_reconfigured_breaker_keeps_its_count_and_applies_the_new_threshold(clock: FakeClock) -> None:
    cb = breaker(clock, consecutive_failures=5)
    cb.record_failure("one")
    cb.record_failure("two")
    cb.reconfigure(BreakerConfig(consecutive_failures=3, cooldown_seconds=1.0))
    cb.record_failure("three")
    assert cb.state == "open"
    clock.advance(1.0)
    assert cb.state == "half_open"  # the new cool-down


def test_a_retry_budget_takes_a_new_ratio(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_retries=0, clock=clock)
    for _ in range(10):
        budget.record_call()
    assert not budget.can_retry()
    budget.ratio = 0.5
    assert budget.can_retry()
    with pytest.raises(ValueError):
        budget.ratio = -1.0
