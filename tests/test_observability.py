"""Metrics (single process and multiprocess) and structured request logs."""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import multiprocess, values
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.logs import (
    REDACTED,
    JsonFormatter,
    ProviderAttempt,
    TextFormatter,
    configure_logging,
    request_log_fields,
    text_digest,
)
from gateway.observability.metrics import (
    LATENCY_BUCKETS,
    MULTIPROC_DIR_ENV,
    OVERHEAD_BUCKETS,
    UPSTREAM_ERROR_REASONS,
    GatewayMetrics,
    MetricsModeError,
    clear_multiprocess_dir,
    mark_process_dead,
    render_multiprocess,
)
from tests.support.polling import eventually

REPO = Path(__file__).parents[1]

# prometheus-client fixes its mode at import: in-process tests need the single-process mode.
single_process_only = pytest.mark.skipif(
    getattr(values.ValueClass, "_multiprocess", False), reason=f"pytest itself runs with ${MULTIPROC_DIR_ENV}"
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def rendered(metrics: GatewayMetrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return parse(body)


# -- metrics, one process ---------------------------------------------------------------------


@single_process_only
def test_requests_latency_and_overhead() -> None:
    metrics = GatewayMetrics()
    assert metrics.multiprocess_dir is None
    metrics.record_request(dialect="cohere", model="m", status=200, seconds=0.2, upstream_seconds=0.197)
    metrics.record_request(dialect="cohere", model="m", status=200, seconds=0.02, upstream_seconds=0.0)
    metrics.record_request(dialect="tei", model="m", status=502, seconds=3.0, upstream_seconds=3.5)

    s = rendered(metrics)
    assert value(s, "rerank_gateway_requests_total", dialect="cohere", model="m", status="200") == 2
    assert value(s, "rerank_gateway_requests_total", dialect="tei", model="m", status="502") == 1
    assert value(s, "rerank_gateway_request_duration_seconds_count", dialect="cohere", model="m") == 2
    assert value(s, "rerank_gateway_request_duration_seconds_sum", dialect="cohere", model="m") == pytest.approx(0.22)
    assert value(s, "rerank_gateway_request_duration_seconds_bucket", dialect="cohere", model="m", le="0.025") == 1
    assert value(s, "rerank_gateway_request_duration_seconds_bucket", dialect="cohere", model="m", le="0.25") == 2
    assert value(s, "rerank_gateway_request_duration_seconds_bucket", dialect="tei", model="m", le="2.5") == 0
    assert value(s, "rerank_gateway_request_duration_seconds_bucket", dialect="tei", model="m", le="30.0") == 1

    # Overheads: 3 ms, 20 ms, and 0 (upstream time longer than the request is clamped).
    assert value(s, "rerank_gateway_overhead_seconds_count") == 3
    assert value(s, "rerank_gateway_overhead_seconds_sum") == pytest.approx(0.023)
    assert value(s, "rerank_gateway_overhead_seconds_bucket", le="0.0001") == 1
    assert value(s, "rerank_gateway_overhead_seconds_bucket", le="0.0025") == 1
    assert value(s, "rerank_gateway_overhead_seconds_bucket", le="0.005") == 2
    assert value(s, "rerank_gateway_overhead_seconds_bucket", le="0.025") == 3


@single_process_only
def test_bucket_ranges() -> None:
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 30.0
    assert OVERHEAD_BUCKETS[0] == 0.0001 and OVERHEAD_BUCKETS[-1] == 0.1
    metrics = GatewayMetrics()
    metrics.record_upstream_call(provider="p", seconds=45.0)
    s = rendered(metrics)
    les = {dict(labels)["le"] for name, labels in s if name == "rerank_gateway_upstream_duration_seconds_bucket"}
    assert les == {*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"}
    assert value(s, "rerank_gateway_upstream_duration_seconds_bucket", provider="p", le="30.0") == 0
    assert value(s, "rerank_gateway_upstream_duration_seconds_bucket", provider="p", le="+Inf") == 1


@single_process_only
def test_upstream_calls_errors_and_usage() -> None:
    metrics = GatewayMetrics()
    metrics.record_upstream_call(provider="deepinfra", seconds=0.3)
    metrics.record_upstream_call(provider="deepinfra", seconds=0.7)
    metrics.record_upstream_call(provider="fireworks", seconds=0.004)
    for reason in sorted(UPSTREAM_ERROR_REASONS):
        metrics.record_upstream_error(provider="deepinfra", reason=reason)  # type: ignore[arg-type]
    metrics.record_upstream_error(provider="fireworks", reason="http_429")
    metrics.record_upstream_error(provider="fireworks", reason="http_429")
    metrics.record_usage(provider="deepinfra", tokens=1200, cost_usd=0.00006)
    metrics.record_usage(provider="deepinfra", tokens=800, cost_usd=0.00004)

    s = rendered(metrics)
    assert value(s, "rerank_gateway_upstream_calls_total", provider="deepinfra", purpose="request") == 2
    assert value(s, "rerank_gateway_upstream_calls_total", provider="fireworks", purpose="request") == 1
    assert value(s, "rerank_gateway_upstream_duration_seconds_sum", provider="deepinfra") == pytest.approx(1.0)
    assert value(s, "rerank_gateway_upstream_duration_seconds_bucket", provider="fireworks", le="0.005") == 1
    for reason in UPSTREAM_ERROR_REASONS:
        assert value(s, "rerank_gateway_upstream_errors_total", provider="deepinfra", reason=reason) == 1
    assert value(s, "rerank_gateway_upstream_errors_total", provider="fireworks", reason="http_429") == 2
    assert value(s, "rerank_gateway_upstream_tokens_total", provider="deepinfra") == 2000
    assert value(s, "rerank_gateway_upstream_cost_usd_total", provider="deepinfra") == pytest.approx(0.0001)
    assert value(s, "rerank_gateway_spend_usd_total", provider="deepinfra", source="reported") == pytest.approx(0.0001)
    assert value(s, "rerank_gateway_spend_usd_total", provider="deepinfra", source="estimated") == 0


def test_spend_is_counted_by_where_its_figure_came_from():
    metrics = GatewayMetrics()
    metrics.record_usage(provider="tei", tokens=1000, cost_usd=0.001, estimated_cost_usd=0.001)
    metrics.record_usage(provider="tei", tokens=500, cost_usd=0.002, estimated_cost_usd=0.0005)
    s = rendered(metrics)
    assert value(s, "rerank_gateway_spend_usd_total", provider="tei", source="estimated") == pytest.approx(0.0015)
    assert value(s, "rerank_gateway_spend_usd_total", provider="tei", source="reported") == pytest.approx(0.0015)
    assert value(s, "rerank_gateway_upstream_cost_usd_total", provider="tei") == pytest.approx(0.003)


@single_process_only
def test_upstream_error_reason_is_a_closed_set() -> None:
    metrics = GatewayMetrics()
    assert UPSTREAM_ERROR_REASONS == {
        "timeout", "connect_timeout", "read_timeout", "dns", "refused", "tls", "connect", "too_large", "malformed",
        "redirect", "http_5xx", "http_429", "http_4xx", "invalid_answer", "budget", "breaker_open", "quality",
        "rate_limited", "refusing",
    }
    with pytest.raises(ValueError, match="not one of"):
        metrics.record_upstream_error(provider="p", reason="HTTP 503: upstream said no")  # type: ignore[arg-type]
    assert not any(name == "rerank_gateway_upstream_errors_total" for name, _ in rendered(metrics))


@single_process_only
def test_cache_fallbacks_budget_and_breaker() -> None:
    metrics = GatewayMetrics()
    metrics.record_cache(model="m", hits=7, misses=3)
    metrics.record_cache(model="m", hits=0, misses=5)
    metrics.record_fallback(model="m", from_provider="deepinfra", to_provider="fireworks")
    metrics.set_budget_remaining(scope="@gateway", window="day", usd=12.5)
    metrics.set_budget_remaining(scope="@gateway", window="day", usd=11.25)
    metrics.set_budget_remaining(scope="deepinfra", window="month", usd=300.0)
    metrics.set_breaker_state(provider="deepinfra", state="open")
    metrics.set_breaker_state(provider="fireworks", state="half_open")
    metrics.set_breaker_state(provider="cohere", state="open")
    metrics.set_breaker_state(provider="cohere", state="closed")

    s = rendered(metrics)
    assert value(s, "rerank_gateway_cache_hits_total", model="m") == 7
    assert value(s, "rerank_gateway_cache_misses_total", model="m") == 8
    assert value(
        s, "rerank_gateway_fallbacks_total", model="m", from_provider="deepinfra", to_provider="fireworks"
    ) == 1
    assert value(s, "rerank_gateway_budget_remaining_usd", scope="@gateway", window="day") == 11.25
    assert value(s, "rerank_gateway_budget_remaining_usd", scope="deepinfra", window="month") == 300.0
    assert value(s, "rerank_gateway_breaker_state", provider="deepinfra") == 2
    assert value(s, "rerank_gateway_breaker_state", provider="fireworks") == 1
    assert value(s, "rerank_gateway_breaker_state", provider="cohere") == 0


@single_process_only
def test_no_created_series() -> None:
    metrics = GatewayMetrics()
    metrics.record_request(dialect="cohere", model="m", status=200, seconds=0.01)
    metrics.record_upstream_call(provider="deepinfra", seconds=0.1)
    body = metrics.render()[0].decode()
    assert "rerank_gateway_requests_total" in body and "_created" not in body


@single_process_only
def test_each_instance_has_its_own_registry() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.record_request(dialect="cohere", model="m", status=200, seconds=0.01)
    first.record_request(dialect="cohere", model="m", status=200, seconds=0.01)
    second.record_request(dialect="cohere", model="m", status=200, seconds=0.01)
    assert value(rendered(first), "rerank_gateway_requests_total", dialect="cohere", model="m", status="200") == 2
    assert value(rendered(second), "rerank_gateway_requests_total", dialect="cohere", model="m", status="200") == 1


@single_process_only
def test_env_set_after_import_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path))
    with pytest.raises(MetricsModeError, match="imported before"):
        GatewayMetrics()


def test_mark_process_dead_without_a_directory_does_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(multiprocess, "mark_process_dead", lambda pid, path: calls.append((pid, path)))
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    mark_process_dead(12345)
    assert calls == []
    mark_process_dead(12345, tmp_path)  # with a directory it is passed on
    assert calls == [(12345, str(tmp_path))]


# -- metrics, several worker processes --------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import os, sys
    from gateway.observability.metrics import GatewayMetrics

    breaker, budget = sys.argv[1], float(sys.argv[2])
    metrics = GatewayMetrics()
    assert metrics.multiprocess_dir == os.environ["PROMETHEUS_MULTIPROC_DIR"]
    metrics.record_request(dialect="cohere", model="m", status=200, seconds=0.2, upstream_seconds=0.197)
    metrics.record_upstream_call(provider="deepinfra", seconds=0.1)
    metrics.record_upstream_error(provider="deepinfra", reason="timeout")
    metrics.record_cache(model="m", hits=2, misses=1)
    metrics.record_usage(provider="deepinfra", tokens=100, cost_usd=0.5)
    metrics.set_breaker_state(provider="deepinfra", state=breaker)
    metrics.set_budget_remaining(scope="@gateway", window="day", usd=budget)
    if len(sys.argv) > 3:
        sys.stdout.buffer.write(metrics.render()[0])
    else:
        print(os.getpid())
    """
)


def run_worker(directory: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, MULTIPROC_DIR_ENV: str(directory), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", _WORKER, *args], env=env, cwd=REPO, capture_output=True, timeout=60, check=True
    )


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    yield directory
    clear_multiprocess_dir(directory)


def test_multiprocess_sums_every_worker(multiproc_dir: Path) -> None:
    first = int(run_worker(multiproc_dir, "open", "10.0").stdout)
    second = int(run_worker(multiproc_dir, "closed", "7.5").stdout)
    assert first != second

    s = parse(render_multiprocess(multiproc_dir)[0])
    assert value(s, "rerank_gateway_requests_total", dialect="cohere", model="m", status="200") == 2
    assert value(s, "rerank_gateway_request_duration_seconds_count", dialect="cohere", model="m") == 2
    assert value(s, "rerank_gateway_request_duration_seconds_bucket", dialect="cohere", model="m", le="0.25") == 2
    assert value(s, "rerank_gateway_overhead_seconds_bucket", le="0.005") == 2
    assert value(s, "rerank_gateway_upstream_calls_total", provider="deepinfra", purpose="request") == 2
    assert value(s, "rerank_gateway_upstream_errors_total", provider="deepinfra", reason="timeout") == 2
    assert value(s, "rerank_gateway_cache_hits_total", model="m") == 4
    assert value(s, "rerank_gateway_cache_misses_total", model="m") == 2
    assert value(s, "rerank_gateway_upstream_tokens_total", provider="deepinfra") == 200
    assert value(s, "rerank_gateway_upstream_cost_usd_total", provider="deepinfra") == 1.0
    # Breakers: the worst live worker; budget: the latest reading.
    assert value(s, "rerank_gateway_breaker_state", provider="deepinfra") == 2
    assert value(s, "rerank_gateway_budget_remaining_usd", scope="@gateway", window="day") == 7.5

    # The first worker dies: its breaker no longer counts, its counters still do.
    mark_process_dead(first, multiproc_dir)
    s = parse(render_multiprocess(multiproc_dir)[0])
    assert value(s, "rerank_gateway_breaker_state", provider="deepinfra") == 0
    assert value(s, "rerank_gateway_budget_remaining_usd", scope="@gateway", window="day") == 7.5
    assert value(s, "rerank_gateway_requests_total", dialect="cohere", model="m", status="200") == 2

    mark_process_dead(second, multiproc_dir)
    s = parse(render_multiprocess(multiproc_dir)[0])
    assert value(s, "rerank_gateway_breaker_state", provider="deepinfra") is None
    assert value(s, "rerank_gateway_budget_remaining_usd", scope="@gateway", window="day") is None
    assert value(s, "rerank_gateway_upstream_calls_total", provider="deepinfra", purpose="request") == 2


def test_multiprocess_render_from_a_worker_includes_the_others(multiproc_dir: Path) -> None:
    run_worker(multiproc_dir, "half_open", "3.0")
    body = run_worker(multiproc_dir, "closed", "2.0", "render").stdout
    s = parse(body)
    assert value(s, "rerank_gateway_requests_total", dialect="cohere", model="m", status="200") == 2
    assert value(s, "rerank_gateway_breaker_state", provider="deepinfra") == 1
    assert value(s, "rerank_gateway_budget_remaining_usd", scope="@gateway", window="day") == 2.0


def test_multiprocess_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_worker(tmp_path / "missing", "closed", "1.0")
    assert b"MetricsModeError" in failed.value.stderr
    assert b"is not a directory" in failed.value.stderr


def test_clear_multiprocess_dir(multiproc_dir: Path) -> None:
    run_worker(multiproc_dir, "closed", "1.0")
    assert list(multiproc_dir.glob("*.db"))
    clear_multiprocess_dir(multiproc_dir)
    assert not list(multiproc_dir.glob("*.db"))
    assert parse(render_multiprocess(multiproc_dir)[0]) == {}


# -- logs -------------------------------------------------------------------------------------

API_KEY = "sk-live-4f9a8b7c6d5e"
CLIENT_KEY = "client-key-0011223344"
QUERY = "which treatment works best for chronic migraine"
PASSAGES = ["Topiramate reduced monthly migraine days.", "Botulinum toxin injections every twelve weeks."]
INSTRUCTION = "Judge relevance for a neurologist"


@dataclass(frozen=True)
class FakeRerankRequest:
    queries: tuple[str, ...]
    documents: tuple[str, ...]
    model: str
    instruction: str | None


def format_with(formatter: logging.Formatter, message: str, *args: Any, exc: bool = False, **extra: Any) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.observability.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise RuntimeError(f"upstream refused Authorization: Bearer {API_KEY}")
            except RuntimeError:
                logger.exception(message, *args, extra=extra)
        else:
            logger.warning(message, *args, extra=extra)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def sample_fields() -> dict[str, Any]:
    return request_log_fields(
        request_id="req-1",
        dialect="cohere",
        model="qwen3-reranker-8b",
        status=200,
        documents=2,
        cache_hits=1,
        cache_misses=1,
        upstream_ms=181.23456,
        total_ms=190.5,
        attempts=[ProviderAttempt("deepinfra", "timeout", 100.0), ProviderAttempt("fireworks", "ok", 81.2)],
    )


def test_request_log_fields() -> None:
    fields = sample_fields()
    assert fields == {
        "request_id": "req-1",
        "dialect": "cohere",
        "model": "qwen3-reranker-8b",
        "status": 200,
        "documents": 2,
        "cache_hits": 1,
        "cache_misses": 1,
        "providers": [
            {"provider": "deepinfra", "outcome": "timeout", "ms": 100.0},
            {"provider": "fireworks", "outcome": "ok", "ms": 81.2},
        ],
        "upstream_ms": 181.235,
        "total_ms": 190.5,
    }
    failed = request_log_fields(
        request_id="req-2", dialect="tei", model=None, status=404, documents=0, cache_hits=0, cache_misses=0,
        upstream_ms=0, total_ms=1.0, error_type="model_not_found",
    )
    assert failed["error_type"] == "model_not_found" and failed["providers"] == [] and failed["model"] is None


def test_request_log_figures_are_rounded_and_an_odd_one_never_breaks_the_line() -> None:
    from gateway.models import Usage

    usage = Usage(tokens=40, cost_usd=0.1 + 0.2, estimated_tokens=0, estimated_cost_usd=1e300)
    fields = request_log_fields(
        request_id="req-3", dialect="cohere", model="m", status=200, documents=1, cache_hits=0, cache_misses=1,
        upstream_ms=float("inf"), total_ms=2.0004999, usage=usage,
        attempts=[ProviderAttempt("deepinfra", "ok", float("nan"))],
    )
    assert fields["cost_usd"] == 0.3 and fields["total_ms"] == 2.0
    # Not finite, or too large to have digits past the point: written as it is, not a failed request.
    assert fields["upstream_ms"] == float("inf") and fields["estimated_cost_usd"] == 1e300
    assert math.isnan(fields["providers"][0]["ms"])
    assert orjson.loads(orjson.dumps(fields))["upstream_ms"] is None  # orjson writes inf and nan as null


def test_json_line_carries_the_request_fields() -> None:
    line = format_with(JsonFormatter(), "rerank %s", "done", **sample_fields())
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = orjson.loads(line)
    assert parsed["level"] == "WARNING"
    assert parsed["logger"].startswith("test.observability.")
    assert parsed["message"] == "rerank done"
    assert parsed["ts"].endswith("Z") and "T" in parsed["ts"]
    for name, expected in sample_fields().items():
        assert parsed[name] == expected


def test_extra_fields_never_overwrite_the_basic_ones() -> None:
    parsed = orjson.loads(format_with(JsonFormatter(), "hello", level="sneaky", logger="other"))
    assert parsed["level"] == "WARNING" and parsed["message"] == "hello"
    assert parsed["logger"] != "other"


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_no_secret_or_text_reaches_the_log(formatter: logging.Formatter) -> None:
    output = format_with(
        formatter,
        "calling upstream with Authorization: Bearer %s and ?api_key=%s",
        API_KEY,
        API_KEY,
        exc=True,
        api_key=API_KEY,
        client_keys=[CLIENT_KEY],
        headers={"Authorization": f"Bearer {API_KEY}", "X-Api-Key": API_KEY, "Accept": "application/json"},
        query=QUERY,
        passages=PASSAGES,
        instruction=INSTRUCTION,
        request=FakeRerankRequest((QUERY, QUERY), tuple(PASSAGES), "m", INSTRUCTION),
        upstream_body={"query": QUERY, "texts": PASSAGES},
        note=f"key sent was Bearer {API_KEY}",
        **{**sample_fields(), "documents": PASSAGES},  # a caller passing the texts, not the count
    )
    for secret in (API_KEY, CLIENT_KEY, QUERY, INSTRUCTION, *PASSAGES, "Topiramate", "migraine"):
        assert secret not in output
    assert REDACTED in output
    assert "application/json" in output  # harmless fields stay
    assert text_digest(QUERY) in output  # a text is named by a digest, no more
    assert "RuntimeError" in output  # the traceback is there, its secret masked


def test_redacted_json_fields() -> None:
    parsed = orjson.loads(
        format_with(
            JsonFormatter(),
            "x",
            api_key=API_KEY,
            query=QUERY,
            documents=PASSAGES,
            request=FakeRerankRequest((QUERY,), (PASSAGES[0],), "m", None),
            tokens=1500,
            cost=object(),
        )
    )
    assert parsed["api_key"] == REDACTED
    assert parsed["query"] == {"chars": len(QUERY), "sha256": text_digest(QUERY)}
    assert parsed["documents"] == {"count": 2}
    assert parsed["request"] == {"queries": {"count": 1}, "documents": {"count": 1}, "model": "m", "instruction": None}
    assert parsed["tokens"] == 1500  # a count named like a secret is still a count
    assert parsed["cost"] == "<object>"


def test_text_format_appends_fields() -> None:
    line = format_with(TextFormatter(), "rerank", request_id="req-1", status=200, providers=[{"provider": "p"}])
    assert " WARNING test.observability." in line
    assert line.rstrip("\n").endswith('rerank request_id=req-1 status=200 providers=[{"provider":"p"}]')


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_configure_logging(root_logger: logging.Logger) -> None:
    others = list(root_logger.handlers)
    configure_logging("debug", "json")
    configure_logging("warning", "text")
    ours = [h for h in root_logger.handlers if h not in others]
    assert len(ours) == 1 and isinstance(ours[0].formatter, TextFormatter)
    assert root_logger.level == logging.WARNING
    assert all(h in root_logger.handlers for h in others)
    configure_logging("INFO", "json")
    ours = [h for h in root_logger.handlers if h not in others]
    assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud", "json")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")  # type: ignore[arg-type]


# -- the log handler: one write per moment (50 ms) ------------------------------------------------


class _Writes:
    """A stream that remembers each write call."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        """Nothing buffered here."""


def _line_handler(stream: _Writes) -> logging.Logger:
    from gateway.observability.logs import JsonFormatter, TurnWrittenStreamHandler

    handler = TurnWrittenStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.turn-written")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


async def _written(stream: _Writes) -> None:
    await eventually(lambda: bool(stream.writes), what="the handler's deferred write")


def test_log_lines_of_a_moment_go_out_in_one_write_in_order() -> None:
    stream = _Writes()
    logger = _line_handler(stream)

    async def one_moment() -> list[str]:
        logger.info("line 0")
        await asyncio.sleep(0)  # a loop turn ends: the line waits for the others of its moment
        for n in (1, 2):
            logger.info("line %d", n)
        written_before = list(stream.writes)
        await _written(stream)
        return written_before

    assert asyncio.run(one_moment()) == []
    assert len(stream.writes) == 1
    assert [orjson.loads(line)["message"] for line in stream.writes[0].splitlines()] == ["line 0", "line 1", "line 2"]


def test_a_loop_closed_before_its_write_does_not_hold_back_later_lines() -> None:
    stream = _Writes()
    logger = _line_handler(stream)

    async def log(message: str) -> None:
        logger.info(message)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log("first"))  # returns at once: the write it booked, 50 ms on, never runs
    loop.close()
    assert stream.writes == []

    async def log_and_wait(message: str) -> None:
        logger.info(message)
        await _written(stream)

    asyncio.run(log_and_wait("second"))  # booked again on this loop: both lines go out
    assert [orjson.loads(line)["message"] for line in "".join(stream.writes).splitlines()] == ["first", "second"]


def test_a_log_line_off_the_loop_is_written_at_once() -> None:
    stream = _Writes()
    logger = _line_handler(stream)
    logger.info("starting")
    assert [orjson.loads(line)["message"] for line in "".join(stream.writes).splitlines()] == ["starting"]


# -- the request line's record --------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def request_logger() -> Iterator[tuple[logging.Logger, _Records]]:
    records = _Records()
    logger = logging.getLogger("test.request-line")
    logger.handlers[:] = [records]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, records
    logger.handlers[:] = []


def test_a_request_line_is_a_record_the_logger_makes(
    request_logger: tuple[logging.Logger, _Records], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.observability.logs import VETTED_FIELDS, RequestLog

    logger, records = request_logger

    class Tagged(logging.LogRecord):
        pass

    monkeypatch.setattr(logging, "_logRecordFactory", Tagged)  # what setLogRecordFactory sets: an embedding app's
    RequestLog(logger).write(sample_fields())
    (record,) = records.records
    assert type(record) is Tagged and record.levelno == logging.INFO and record.getMessage() == "rerank"
    assert getattr(record, VETTED_FIELDS) == sample_fields()
    line = orjson.loads(JsonFormatter().format(record))
    assert line.pop("ts").endswith("Z")
    assert line == {"level": "INFO", "logger": "test.request-line", "message": "rerank", **sample_fields()}

    logger.setLevel(logging.WARNING)
    RequestLog(logger).write(sample_fields())
    assert len(records.records) == 1  # below the logger's level: no line
