"""MinuteHistory: the last hour per minute, bounded, with minutes that age out."""

from __future__ import annotations

from gateway.observability.history import MINUTES, MinuteHistory


class Clock:
    def __init__(self, now: float = 1_767_225_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_minute_counts_outcomes_pairs_latency_and_spend():
    clock = Clock()
    history = MinuteHistory(clock)
    history.record_request("cache", 10, 0)
    history.record_request("provider", 4, 6, [("deepinfra", 0.100)] * 19 + [("deepinfra", 2.0)])
    history.record_request("error", 0, 0)
    history.record_spend("deepinfra", 0.000012)
    history.record_spend("fireworks", 0.0)  # an answer that cost nothing draws no spend line
    view = history.view()
    assert len(view.minutes) == MINUTES and view.minutes[-1] == clock.now
    assert {outcome: values[-1] for outcome, values in view.requests.items()} == {"cache": 1, "provider": 1, "lexical": 0, "error": 1}
    assert view.cache_hit_rate[-1] == 14 / 20
    assert view.cache_hit_rate[0] is None  # nothing looked up then: no point, not a zero
    # 19 of 20 answers took 100 ms: the p95 is in their bin (15% wide), not near the 2 s straggler.
    p95 = view.p95_ms["deepinfra"][-1]
    assert p95 is not None and 100 <= p95 < 115
    assert view.spend_usd == {"deepinfra": [0.0] * (MINUTES - 1) + [0.000012]}


def test_minutes_age_out_and_the_ring_stays_bounded():
    clock = Clock()
    history = MinuteHistory(clock)
    for _minute in range(3 * MINUTES):
        history.record_request("provider", 0, 1)
        history.record_spend("deepinfra", 1.0)
        clock.now += 60
    clock.now -= 60
    view = history.view()
    # Three hours recorded, one kept: each of the last 60 minutes holds its own request only.
    assert view.requests["provider"] == [1.0] * MINUTES
    assert sum(v or 0 for v in view.spend_usd["deepinfra"]) == MINUTES
    clock.now += 30 * 60  # half an hour of silence
    later = history.view()
    assert later.requests["provider"] == [1.0] * (MINUTES - 30) + [0.0] * 30
    assert later.cache_hit_rate[-30:] == [None] * 30


def test_agreement_is_the_mean_of_the_minute_per_model_and_provider():
    clock = Clock()
    history = MinuteHistory(clock)
    history.record_agreement("m", "fireworks", 0.1)
    history.record_agreement("m", "fireworks", 0.3)
    clock.now += 120
    history.record_agreement("m", "fireworks", 0.05)
    series = history.view().agreement_mae["m"]["fireworks"]
    assert series[-3:] == [0.2, None, 0.05]
    assert history.view().as_json()["agreement_mae"] == {"m": {"fireworks": series}}
