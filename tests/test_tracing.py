"""OpenTelemetry traces (issue 18 item 3): the client's trace continued, one span per provider try,
`traceparent` sent upstream, OTLP/HTTP export to a real receiver over a socket; nothing when off.

The in-memory exporter tests read spans as the SDK made them; the receiver test reads them as a
collector would, decoded from the protobuf the gateway POSTed.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import create_app
from gateway.config import parse_config
from gateway.emulator import EmulatorConfig, create_emulator_app
from gateway.observability.tracing import Tracing, build_tracing, tracing_wanted, with_trace_context
from tests.support.config import gateway_config
from tests.support.gateway import EMULATOR_KEY, MODEL, add_fault
from tests.support.otlp_receiver import OtlpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
BODY = {"query": "what does the MFC procedure cost?",
        "documents": ["It is free.", "It opens at eight.", "Bankruptcy through the MFC costs nothing."]}


class Upstream:
    """The emulator, with every request's headers kept: what the provider saw."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = create_emulator_app(EmulatorConfig(api_key=EMULATOR_KEY))

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            if not request.path.startswith("/_emulator"):
                self.headers.append(dict(request.headers))
            return await handler(request)

        app.middlewares.append(record)
        return app


@pytest.fixture
async def upstream(aiohttp_client) -> tuple[Upstream, Any]:
    recorder = Upstream()
    client = await aiohttp_client(recorder.app())
    return recorder, client


def settings(upstream_client: Any, fallback: list[str], **sections: Any) -> Any:
    return parse_config(gateway_config(str(upstream_client.make_url("")).rstrip("/"), fallback, **sections))


async def traced_gateway(aiohttp_client: Any, upstream_client: Any, fallback: list[str], **sections: Any
                         ) -> tuple[Any, InMemorySpanExporter]:
    """A gateway in front of the upstream emulator whose spans go to the exporter it returns."""
    exporter = InMemorySpanExporter()
    gateway = await aiohttp_client(create_app(settings(upstream_client, fallback, **sections),
                                              tracing=Tracing.exporting_to(exporter, batch=False)))
    return gateway, exporter


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind == kind]


async def test_the_request_continues_the_clients_trace_and_each_try_is_a_child(aiohttp_client, upstream):
    recorder, upstream_client = upstream
    gateway, exporter = await traced_gateway(aiohttp_client, upstream_client, ["deepinfra"])
    response = await gateway.post("/v1/rerank", json=BODY, headers={"traceparent": TRACEPARENT, "X-Request-ID": "t-1"})
    assert response.status == 200, await response.text()
    spans = exporter.get_finished_spans()

    [server] = by_kind(spans, SpanKind.SERVER)
    assert server.name == "POST /v1/rerank"
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN
    attributes = server.attributes or {}
    assert attributes["http.response.status_code"] == 200 and attributes["rerank.request_id"] == "t-1"
    assert attributes["rerank.model"] == MODEL and attributes["rerank.dialect"] == "cohere-v1"
    assert attributes["rerank.cache_hits"] == 0 and attributes["rerank.cache_misses"] == 3
    assert attributes["rerank.documents"] == 3 and attributes["rerank.provider"] == "deepinfra"

    [attempt] = by_kind(spans, SpanKind.CLIENT)
    assert attempt.parent is not None and attempt.parent.span_id == server.context.span_id
    assert attempt.context.trace_id == server.context.trace_id
    tried = attempt.attributes or {}
    assert tried["rerank.provider"] == "deepinfra" and tried["rerank.outcome"] == "ok"
    tokens = tried["rerank.tokens"]
    assert tried["rerank.pairs"] == 3 and isinstance(tokens, int) and tokens > 0
    assert tried["rerank.hedged"] is False and tried["rerank.panic"] is False and tried["rerank.probe"] is False

    # The provider was told the try's span as its parent: its own spans join the same trace.
    [sent] = recorder.headers
    assert sent["traceparent"] == f"00-{TRACE_ID}-{format(attempt.context.span_id, '016x')}-01"

    # A second request is served from the cache: no provider try, and the server span says so.
    exporter.clear()
    again = await gateway.post("/v1/rerank", json=BODY)
    assert again.status == 200
    spans = exporter.get_finished_spans()
    assert by_kind(spans, SpanKind.CLIENT) == []
    [server] = by_kind(spans, SpanKind.SERVER)
    assert server.parent is None  # no traceparent sent: a new trace
    assert (server.attributes or {})["rerank.cache_hits"] == 3


async def test_a_failed_try_and_its_fallback_are_two_spans(aiohttp_client, upstream):
    recorder, upstream_client = upstream
    await add_fault(upstream_client, "deepinfra", "status", status=503)
    gateway, exporter = await traced_gateway(aiohttp_client, upstream_client, ["deepinfra", "fireworks"],
                                             resilience={"max_retries": 0})
    assert (await gateway.post("/v1/rerank", json=BODY, headers={"traceparent": TRACEPARENT})).status == 200
    attempts = by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    outcomes = [((s.attributes or {})["rerank.provider"], (s.attributes or {})["rerank.outcome"]) for s in attempts]
    assert outcomes[0][0] == "deepinfra" and outcomes[0][1] != "ok"
    assert outcomes[-1] == ("fireworks", "ok")
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert {format(s.context.trace_id, "032x") for s in attempts} == {TRACE_ID}
    # Each try sent its own span id upstream.
    parents = [headers["traceparent"].split("-")[2] for headers in recorder.headers]
    assert parents == [format(s.context.span_id, "016x") for s in attempts]


async def test_a_hedged_try_says_so_and_the_slow_one_is_cancelled(aiohttp_client, upstream):
    _, upstream_client = upstream
    await add_fault(upstream_client, "deepinfra", "slow", delay_ms=3000)
    gateway, exporter = await traced_gateway(aiohttp_client, upstream_client, ["deepinfra", "fireworks"],
                                             resilience={"hedge": 50})
    answer = await gateway.post("/v1/rerank", json=BODY)
    assert answer.status == 200 and answer.headers["X-Rerank-Provider"] == "fireworks"
    tries = {(s.attributes or {})["rerank.provider"]: s.attributes or {}
             for s in by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)}
    assert tries["fireworks"]["rerank.hedged"] is True and tries["fireworks"]["rerank.outcome"] == "ok"
    assert tries["deepinfra"]["rerank.hedged"] is False and tries["deepinfra"]["rerank.outcome"] == "cancelled"


async def test_a_canary_probe_is_traced_as_a_root_span_marked_probe(aiohttp_client, upstream):
    _, upstream_client = upstream
    raw = gateway_config(str(upstream_client.make_url("")).rstrip("/"), ["deepinfra"])
    raw["models"][MODEL]["quality"]["probe_interval_seconds"] = 600  # probes once at start
    exporter = InMemorySpanExporter()
    await aiohttp_client(create_app(parse_config(raw), tracing=Tracing.exporting_to(exporter, batch=False)))
    deadline = asyncio.get_running_loop().time() + 20
    while not exporter.get_finished_spans() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    probes = by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert probes, "no probe span within 20 s"
    attributes = probes[0].attributes or {}
    assert attributes["rerank.probe"] is True and attributes["rerank.purpose"] == "probe"
    assert attributes["rerank.provider"] == "deepinfra" and probes[0].parent is None


async def test_a_shadow_call_is_a_root_span_of_its_own_not_part_of_the_clients_request(aiohttp_client, upstream):
    """A shadow call runs in a context of its own (issue 29 item 4): it is the gateway's work, not
    the client's request, so it neither joins the client's trace nor lands in its request's log line."""
    _, upstream_client = upstream
    raw = gateway_config(str(upstream_client.make_url("")).rstrip("/"), ["deepinfra", "fireworks"])
    raw["models"][MODEL]["quality"]["shadow_rate"] = 1.0
    exporter = InMemorySpanExporter()
    gateway = await aiohttp_client(create_app(parse_config(raw), tracing=Tracing.exporting_to(exporter, batch=False)))
    assert (await gateway.post("/v1/rerank", json=BODY, headers={"traceparent": TRACEPARENT})).status == 200
    deadline = asyncio.get_running_loop().time() + 10
    while len(by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)) < 2:
        assert asyncio.get_running_loop().time() < deadline, "no shadow call span within 10 s"
        await asyncio.sleep(0.02)
    tries = {(s.attributes or {})["rerank.purpose"]: s for s in by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)}
    assert format(tries["request"].context.trace_id, "032x") == TRACE_ID
    shadow = tries["shadow"]
    assert (shadow.attributes or {})["rerank.provider"] == "fireworks"
    assert shadow.parent is None and format(shadow.context.trace_id, "032x") != TRACE_ID


async def test_an_error_answer_is_a_failed_server_span(aiohttp_client, upstream):
    _, upstream_client = upstream
    gateway, exporter = await traced_gateway(aiohttp_client, upstream_client, ["deepinfra"])
    assert (await gateway.post("/v1/rerank", json={"query": "q"})).status == 422
    [server] = exporter.get_finished_spans()
    assert (server.attributes or {})["http.response.status_code"] == 422
    assert server.status.status_code != StatusCode.ERROR  # a client's mistake is not the gateway's failure


async def test_off_sends_no_traceparent_and_touches_nothing(aiohttp_client, upstream):
    recorder, upstream_client = upstream
    gateway = await aiohttp_client(create_app(settings(upstream_client, ["deepinfra"])))
    response = await gateway.post("/v1/rerank", json=BODY, headers={"traceparent": TRACEPARENT})
    assert response.status == 200
    [sent] = recorder.headers
    assert "traceparent" not in {name.lower() for name in sent}
    headers = {"Accept": "application/json"}
    assert with_trace_context(headers) is headers  # off: the client's own dict, not a copy
    assert not Tracing.off().enabled


@pytest.mark.parametrize("enabled, endpoint, environ, wanted", [
    (None, None, {}, False),
    (None, None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    (None, None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    (None, None, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
    (None, None, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    (None, "http://collector:4318", {}, True),
    (True, None, {}, True),
    (False, None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    (True, None, {"OTEL_SDK_DISABLED": "true"}, False),
])
def test_what_turns_tracing_on(enabled, endpoint, environ, wanted):
    assert tracing_wanted(enabled, endpoint, environ) is wanted
    tracing = build_tracing(enabled, endpoint, "rerank-gateway", environ)
    try:
        assert tracing.enabled is wanted
    finally:
        tracing.shutdown()


def test_the_config_key_section_parses():
    raw = gateway_config("http://127.0.0.1:9", ["deepinfra"], tracing={"otlp_endpoint": "http://collector:4318"})
    config = parse_config(raw)
    assert config.tracing.otlp_endpoint == "http://collector:4318" and config.tracing.enabled is None


async def test_spans_reach_a_real_otlp_http_receiver(aiohttp_client, aiohttp_server, upstream, monkeypatch):
    _, upstream_client = upstream
    receiver = OtlpReceiver()
    collector = await aiohttp_server(receiver.app())
    monkeypatch.setenv("OTEL_SERVICE_NAME", "kb-rerank")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(collector.make_url("")).rstrip("/"))
    tracing = build_tracing(None, None, "rerank-gateway", os.environ)
    assert tracing.enabled
    gateway = await aiohttp_client(create_app(settings(upstream_client, ["deepinfra"]), tracing=tracing))
    response = await gateway.post("/v1/rerank", json=BODY, headers={"traceparent": TRACEPARENT})
    assert response.status == 200
    # Shutdown flushes the batch; the exporter posts from its own thread while this loop serves the receiver.
    await asyncio.to_thread(tracing.shutdown)

    assert receiver.content_types and set(receiver.content_types) == {"application/x-protobuf"}
    server = next(s for s in receiver.spans if s.kind == 2)  # SPAN_KIND_SERVER
    attempt = next(s for s in receiver.spans if s.kind == 3)  # SPAN_KIND_CLIENT
    assert server.trace_id == TRACE_ID and server.parent_span_id == CLIENT_SPAN
    assert attempt.trace_id == TRACE_ID and attempt.parent_span_id == server.span_id
    assert server.attributes["rerank.model"] == MODEL and server.attributes["http.response.status_code"] == 200
    assert attempt.attributes["rerank.provider"] == "deepinfra" and attempt.attributes["rerank.outcome"] == "ok"
    assert server.resource["service.name"] == "kb-rerank"


def test_without_the_extra_installed_it_warns_and_serves_untraced(monkeypatch, caplog):
    import sys

    # None in sys.modules makes the import fail as a missing package does.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with caplog.at_level("WARNING", logger="gateway.tracing"):
        tracing = build_tracing(True, None, "rerank-gateway", {})
    assert not tracing.enabled
    assert "pip install 'rerank-gateway[otel]'" in caplog.text
