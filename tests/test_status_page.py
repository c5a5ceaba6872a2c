"""The /status page: pure render tests on a sample snapshot, and a real screenshot in headless Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.observability.history import MinuteHistory
from gateway.resilience.health import RecentError
from gateway.web.edge import LIVE
from gateway.web.status_page import (
    BudgetBar,
    CacheStatus,
    ModelStatus,
    ProviderStatus,
    StatusSnapshot,
    render_status_page,
)
from tests.support.browser import NEEDS_CHROMIUM, console_lines, decode_png, run_chromium

ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS = Path(__file__).parent.parent / "docs"
# RERANK_GATEWAY_UPDATE_DOCS=1: the live-traffic test also writes the README's screenshot.
UPDATE_DOCS = os.environ.get("RERANK_GATEWAY_UPDATE_DOCS") == "1"
NOW = 1_767_225_600.0 + 13 * 3600 + 37 * 60  # 2026-01-01 13:37:00 UTC
SCRIPT_REASON = "upstream said <script>alert('x')</script> & gave up"


def sample_snapshot() -> StatusSnapshot:
    deepinfra = ProviderStatus(
        name="deepinfra", kind="deepinfra", usable=True, reason=None, breaker="closed",
        budget=(BudgetBar("today", 1.84, 0.02, 5.0), BudgetBar("month", 41.30, 0.02, 100.0)), p95_ms=182.0,
    )
    fireworks = ProviderStatus(
        name="fireworks", kind="fireworks", usable=False, reason="over budget: today's $3.00 limit reached",
        breaker="half_open", budget=(BudgetBar("today", 3.0, 0.0, 3.0), BudgetBar("month", 48.5, 0.0, 60.0)), p95_ms=240.7,
    )
    cohere = ProviderStatus(
        name="jina-cohere", kind="cohere", usable=False, reason=SCRIPT_REASON, breaker="open",
        budget=(BudgetBar("today", 0.0, 0.0, None), BudgetBar("month", 0.12, 0.0, None)), p95_ms=None,
    )
    tei = ProviderStatus(
        name="tei-local", kind="tei", usable=False, reason="key variable TEI_KEY is unset", breaker="closed",
        budget=(), p95_ms=None,
    )
    return StatusSnapshot(
        generated_at=NOW,
        config_loaded_at=NOW - 2 * 3600 - 5 * 60,
        config_path="/etc/rerank-gateway/config.toml",
        models=(
            ModelStatus("qwen3-reranker-8b", ("Qwen/Qwen3-Reranker-8B", "accounts/fireworks/models/qwen3-reranker-8b"),
                        (deepinfra, fireworks, cohere)),
            ModelStatus("bge-reranker-v2-m3", (), (tei,)),
        ),
        cache=CacheStatus(backend="redis", hits=18_204, misses=4_551, saved_usd=12.3456),
        recent_errors=(
            RecentError(NOW - 400, "fireworks", "HTTP 429: rate limited (Retry-After: 2)"),
            RecentError(NOW - 35, "jina-cohere", SCRIPT_REASON),
            RecentError(NOW - 3 * 3600, "deepinfra", "timeout after 10s"),
        ),
        gateway_budget=(BudgetBar("today", 4.96, 0.04, 10.0), BudgetBar("month", 89.92, 0.04, 150.0)),
    )


def visible_text(page: str) -> str:
    import html

    return html.unescape(re.sub(r"<[^>]+>", " ", page.split("</style>", 1)[1]))


# --- pure rendering ---------------------------------------------------------------------------


def test_every_fact_is_on_the_page():
    text = " ".join(visible_text(render_status_page(sample_snapshot())).split())
    # Models, aliases and the fallback order, in order.
    assert "qwen3-reranker-8b" in text and "accounts/fireworks/models/qwen3-reranker-8b" in text
    assert text.index("1 deepinfra deepinfra") < text.index("2 fireworks fireworks") < text.index("3 jina-cohere cohere")
    # Health, reasons and breaker states.
    assert "usable" in text and "unusable" in text
    assert "over budget: today's $3.00 limit reached" in text
    assert "key variable TEI_KEY is unset" in text
    for state in ("closed", "half open", "open"):
        assert state in text
    assert "182 ms" in text and "241 ms" in text
    # Budget bars: % of limit, spent of limit, in-flight holds, and unlimited windows.
    assert "today" in text and "month" in text
    assert "today 37% $1.84 of $5.00 (+$0.02 held)" in text
    assert "today 100% $3.00 of $3.00" in text
    assert "no limit" in text and "$0.12 spent" in text
    assert "today 50% $4.96 of $10.00" in text  # gateway-wide
    # Cache: hit rate and money saved.
    assert "80.0% hit rate" in text and "18,204 hits" in text and "4,551 misses" in text and "redis" in text
    assert "saved $12.35" in text
    # Recent errors, newest first, and config load time in UTC with its path.
    assert text.index("35 s ago") < text.index("7 min ago") < text.index("3 h ago")
    assert "HTTP 429: rate limited (Retry-After: 2)" in text
    assert "2026-01-01 11:32:00 UTC" in text and "/etc/rerank-gateway/config.toml" in text
    assert "status at 2026-01-01 13:37:00 UTC" in text
    # The verdict: every model has a usable provider? bge-reranker-v2-m3 has none.
    assert "No usable provider for bge-reranker-v2-m3" in text


def test_untrusted_text_is_escaped():
    snapshot = sample_snapshot()
    hostile = ProviderStatus("<b>p</b>", "<i>k</i>", False, SCRIPT_REASON, "open", (BudgetBar("<u>today</u>", 1, 0, 2),), None)
    snapshot = StatusSnapshot(
        generated_at=snapshot.generated_at, config_loaded_at=snapshot.config_loaded_at,
        config_path='/tmp/"quoted"<path>.toml',
        models=(ModelStatus("<model>", ("<alias>",), (hostile,)),),
        cache=CacheStatus("<redis>", 1, 1, 0.5),
        recent_errors=(RecentError(NOW, "<prov>", SCRIPT_REASON),),
        gateway_budget=(),
    )
    page = render_status_page(snapshot)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; gave up" in page
    for raw in ("<b>p</b>", "<i>k</i>", "<u>today</u>", "<model>", "<alias>", "<redis>", "<prov>", '"quoted"<path>'):
        assert raw not in page
        assert html_escaped(raw) in page


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_a_page_that_is_all_well_and_all_empty():
    healthy = ProviderStatus("deepinfra", "deepinfra", True, None, "closed", (), 95.0)
    page = render_status_page(StatusSnapshot(
        generated_at=NOW, config_loaded_at=NOW, config_path=None,
        models=(ModelStatus("m", (), (healthy,)),), cache=CacheStatus("memory", 0, 0, 0.0),
        recent_errors=(), gateway_budget=(),
    ))
    text = " ".join(visible_text(page).split())
    assert "All 1 model servable; every provider healthy" in text
    assert "no lookups yet" in text and "saved $0.00" in text
    assert "No provider errors recently." in text
    assert "no gateway-wide budget tracked" in text and "not tracked" in text
    assert "aliases: none" in text and "built in-process, no file" in text


def test_bars_never_overflow_their_track():
    over = ProviderStatus("p", "deepinfra", False, "over budget", "closed",
                          (BudgetBar("today", 7.5, 1.0, 5.0), BudgetBar("month", 0.5, 0.0, 0.0)), None)
    page = render_status_page(StatusSnapshot(NOW, NOW, None, (ModelStatus("m", (), (over,)),), CacheStatus("memory", 1, 0, 0.0), (), ()))
    widths = [float(width) for width in re.findall(r"width:([0-9.]+)%", page)]
    assert widths and all(0 <= width <= 100 for width in widths)
    assert "170% $7.50 of $5.00" in " ".join(visible_text(page).split())


# --- a real browser ---------------------------------------------------------------------------



@pytest.mark.browser
@NEEDS_CHROMIUM
async def test_screenshot_in_headless_chromium(aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path):
    page = render_status_page(sample_snapshot())

    async def status(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/status", status)
    server = await aiohttp_server(app, host="127.0.0.1")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status_page.png"
    screenshot.unlink(missing_ok=True)

    _, log = await run_chromium(str(server.make_url("/status")), tmp_path / "chromium-profile",
                                "--window-size=1200,900", f"--screenshot={screenshot}")
    assert screenshot.exists(), f"chromium wrote no screenshot: {log[-2000:]}"

    width, height, pixels = decode_png(screenshot.read_bytes())
    assert (width, height) == (1200, 900)
    assert screenshot.stat().st_size > 20_000  # a blank 1200x900 PNG compresses to a few KB
    assert len(set(pixels)) > 50, "the screenshot is (nearly) one colour: the page did not render"




def test_the_page_refreshes_itself_unless_told_not_to():
    snapshot = sample_snapshot()
    refreshing = render_status_page(dataclasses.replace(snapshot, refresh_seconds=10))
    assert '<meta http-equiv="refresh" content="10">' in refreshing and 'href="?refresh=0"' in refreshing
    still = render_status_page(dataclasses.replace(snapshot, refresh_seconds=0))
    assert 'http-equiv="refresh"' not in still and "not refreshing" in still


def test_an_empty_p95_says_why():
    page = render_status_page(sample_snapshot())
    assert 'title="needs 20 answers">—</span>' in page
    assert "— until 20 were seen" in page


async def test_status_refresh_parameter(make_gateway):
    gateway = await make_gateway()
    default = await (await gateway.get("/status")).text()
    assert '<meta http-equiv="refresh" content="10">' in default
    off = await (await gateway.get("/status?refresh=0")).text()
    assert 'http-equiv="refresh"' not in off
    bad = await gateway.get("/status?refresh=soon")
    assert bad.status == 400 and "refresh: expected whole seconds" in (await bad.json())["error"]["message"]


def test_healthy_notes_are_not_red_and_small_money_is_not_zero():
    from gateway.quality.board import QualityReport

    def quality(**fields: object) -> QualityReport:
        base: dict = {"state": "passing", "reason": "passed 15 of 15", "reference": False, "shares_cache": False,
                      "mae": None, "kendall_tau": None, "group": "g"}
        return QualityReport(**{**base, **fields})

    reference = ProviderStatus("a", "deepinfra", True, None, "closed", (), 90.0, quality(reference=True, shares_cache=True))
    agreeing = ProviderStatus("b", "fireworks", True, None, "closed", (), 90.0,
                              quality(shares_cache=True, mae=0.0, kendall_tau=1.0))
    apart = ProviderStatus("c", "cohere", True, None, "closed", (), 90.0, quality(mae=0.3, kendall_tau=0.2))
    failing = ProviderStatus("d", "tei", False, "fails its canary", "closed", (), 90.0,
                             quality(state="failing", serves=False))
    page = render_status_page(dataclasses.replace(
        sample_snapshot(), models=(ModelStatus("m", (), (reference, agreeing, apart, failing)),),
        cache=CacheStatus("redis", 46, 12, 0.0000046),
    ))

    def notes(css: str) -> list[str]:
        return [html.unescape(note) for note in re.findall(rf'<div class="{css}">([^<]*)</div>', page)]

    assert "saved $0.000005" in " ".join(visible_text(page).split())
    assert [n.split(" · ")[0] for n in notes("note muted")] == [
        "the reference: its scores are the cached ones", "agrees with the reference: shares its cached scores"]
    assert [n.split(" · ")[0] for n in notes("note warn")][:1] == [
        "scores whole requests, cached apart (agreement unknown or outside the tolerance)"]
    assert notes("note bad") == ["fails its canary"]  # red: the one failure
    assert '<span class="pill ok" title="passed 15 of 15">canary passing</span>' in page
    assert "canary failing · not served" in page and 'class="pill bad"' in page


def test_the_last_hour_is_drawn_and_says_whose_it_is():
    from gateway.observability.history import MinuteHistory

    history = MinuteHistory(lambda: NOW)
    history.record_request("cache", 20, 0)
    history.record_request("provider", 0, 20, [("deepinfra", 0.04)])
    history.record_spend("deepinfra", 0.0000123)
    page = render_status_page(dataclasses.replace(
        sample_snapshot(), history=history.view(), history_scope="this worker's own (pid 7) <of 2>"))
    drawn = dict(re.findall(r'data-chart="([a-z0-9_]+)" data-points="(\d+)"', page))
    assert drawn == {"requests": "2", "cache_hit_rate": "1", "p95": "1", "spend": "1"}  # no shadow: no agreement
    assert "this worker&#x27;s own (pid 7) &lt;of 2&gt;" in page
    assert "the hour's total: deepinfra $0.000012" in " ".join(visible_text(page).split())
    empty = render_status_page(dataclasses.replace(sample_snapshot(), history=MinuteHistory(lambda: NOW).view()))
    assert empty.count("no data yet") == 4


# --- the live page in a real browser, after traffic ---------------------------------------------

@pytest.mark.browser
@NEEDS_CHROMIUM
async def test_the_console_check_sees_a_console_error(aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path):
    """The check the live test relies on can fail: a page that logs an error is caught."""

    async def noisy(request: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><p>x<script>console.error('boom-42'); undefinedCall();</script>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/", noisy)
    server = await aiohttp_server(app, host="127.0.0.1")
    _, log = await run_chromium(str(server.make_url("/")), tmp_path / "profile", "--dump-dom")
    assert any("boom-42" in line for line in console_lines(log)), log[-2000:]


class MovableClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.browser
@NEEDS_CHROMIUM
async def test_the_page_after_mixed_traffic_in_headless_chromium(make_gateway, emulator, tmp_path: Path):
    """Real requests through the gateway and the emulator over 20 minutes of the history's clock."""
    from tests.support.gateway import add_fault

    def edit(raw: dict) -> None:
        raw["models"]["qwen3-reranker-8b"]["quality"]["shadow_rate"] = 0.5
        raw["providers"]["deepinfra"]["budget"] = {"daily_usd": 0.0004, "monthly_usd": 0.05}
        raw["budget"] = {"daily_usd": 0.001}

    gateway = await make_gateway(["deepinfra", "fireworks", "cohere"], edit=edit)
    history: MinuteHistory = gateway.app[LIVE].shared.metrics.history
    clock = history.clock = MovableClock((history.clock() // 60 - 20) * 60 + 1)
    await add_fault(emulator, "fireworks", "rescale")  # its shadow scores drift off the reference's
    documents = ["The MFC in Kazan opens at 8:00.", "Out-of-court bankruptcy through the MFC is free.", "Weather."]
    for minute in range(20):
        for _repeat in range(3 + minute % 4):  # the same query again: served from the cache
            assert (await gateway.post("/v1/rerank", json={"query": "mfc hours", "documents": documents})).status == 200
        for fresh in range(1 + minute // 5):  # new pairs: the providers answer, and spend
            body = {"query": f"question {minute}.{fresh}", "documents": [*documents, f"passage {minute}"]}
            assert (await gateway.post("/v1/rerank", json=body)).status == 200
        if minute in (6, 7, 13):  # a burst of upstream refusals
            await add_fault(emulator, "deepinfra", "status", status=400, count=2)
            for attempt in range(2):
                body = {"query": f"refused {minute}.{attempt}", "documents": documents}
                assert (await gateway.post("/v1/rerank", json=body)).status == 502
        await wait_for_shadow_calls(gateway)
        clock.now += 60
    clock.now -= 60

    ARTIFACTS.mkdir(exist_ok=True)
    url = str(gateway.make_url("/status?refresh=0"))
    dom, log = await run_chromium(url, tmp_path / "dom", "--dump-dom")
    assert console_lines(log) == [], console_lines(log)
    page = dom.decode()
    drawn = {name: int(points) for name, points in re.findall(r'data-chart="([a-z0-9_]+)" data-points="(\d+)"', page)}
    # Each chart holds the traffic above: 20 minutes of requests, hit rate and p95; spend; agreement.
    assert drawn["requests"] >= 20 + 3 and drawn["cache_hit_rate"] == 20 and drawn["p95"] >= 20, drawn
    assert drawn["spend"] >= 20 and drawn.get("agreement", 0) > 0, drawn
    assert "<script" not in page.lower()

    screenshot = ARTIFACTS / "status_page_live.png"
    screenshot.unlink(missing_ok=True)
    _, log = await run_chromium(url, tmp_path / "shot", "--window-size=1200,1400", f"--screenshot={screenshot}")
    assert screenshot.exists(), f"no screenshot: {log[-2000:]}"
    width, height, pixels = decode_png(screenshot.read_bytes())
    assert (width, height) == (1200, 1400) and len(set(pixels)) > 50
    if UPDATE_DOCS:
        (DOCS / "status-page.png").write_bytes(screenshot.read_bytes())


async def wait_for_shadow_calls(gateway) -> None:
    """Shadow calls run in the background: let those of this minute land in it."""
    background = gateway.app[LIVE].current.parts.background
    deadline = asyncio.get_running_loop().time() + 10
    while len(background) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


# --- a refusing provider and a budget past its alert share, at a laptop's and a phone's width -------

def overflow_probe(width: int) -> str:
    """A page that lays /status out in a frame `width` px wide (headless Chromium's window is at least
    500 px) and says in its DOM by how many px something is wider than its box: the page scrolling
    sideways, or a table clipped inside its section."""
    return f"""<!DOCTYPE html><html><body style="margin:0">
<iframe id="page" src="/status" style="width:{width}px;height:2400px;border:0"></iframe>
<script>
document.getElementById("page").addEventListener("load", event => {{
  const doc = event.target.contentDocument, view = event.target.contentWindow;
  const worst = [...doc.querySelectorAll("main, section, table, .model-head")]
    .map(el => el.scrollWidth - el.clientWidth).reduce((a, b) => Math.max(a, b), 0);
  document.body.dataset.width = String(view.innerWidth);
  document.body.dataset.overflow = String(Math.max(worst, doc.documentElement.scrollWidth - view.innerWidth));
}});
</script></body></html>"""


async def troubled_gateway(make_gateway, emulator):
    """deepinfra answers 403 to every call; fireworks has spent 85% of its daily budget."""
    from gateway.budget import every_limit
    from tests.support.gateway import add_fault

    await add_fault(emulator, "deepinfra", "status", status=403)
    gateway = await make_gateway(providers={"fireworks": {"budget": {"daily_usd": 0.001, "monthly_usd": 0.05}}},
                                 budget={"daily_usd": 0.01})
    for n in range(3):
        body = {"query": f"mfc hours {n}", "documents": ["The MFC opens at 8:00.", "Weather.", f"passage {n}"]}
        assert (await gateway.post("/v1/rerank", json=body)).status == 200
    live = gateway.app[LIVE]
    limits = [limit for limit in every_limit(live.config) if limit.scope == "fireworks"]
    reservation = await live.shared.ledger.reserve(limits, 0.00085, hold_seconds=60)
    await live.shared.ledger.settle(reservation, 0.00085, 17_000)
    return gateway


@pytest.mark.browser
@NEEDS_CHROMIUM
@pytest.mark.parametrize("width", [1000, 1400, 390])
async def test_a_refusing_provider_and_a_budget_past_its_alert_share_fit_the_width(
    make_gateway, emulator, aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path, width: int,
):
    gateway = await troubled_gateway(make_gateway, emulator)
    page = await (await gateway.get("/status?refresh=0")).text()
    assert '<span class="pill bad">refusing until ' in page and "HTTP 403: emulated fault" in page
    assert '<div class="fill warn"' in page  # fireworks at 85% of its day
    assert "<details class=\"canary\">" in page or "canary" not in visible_text(page)

    async def status(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def probe(request: web.Request) -> web.Response:
        return web.Response(text=overflow_probe(width), content_type="text/html")

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/probe", probe)
    server = await aiohttp_server(app, host="127.0.0.1")
    dom, log = await run_chromium(str(server.make_url("/probe")), tmp_path / "dom", "--window-size=1500,900",
                                  "--dump-dom")
    assert console_lines(log) == [], console_lines(log)
    laid_out = re.search(r'data-width="(\d+)" data-overflow="(-?\d+)"', dom.decode())
    assert laid_out is not None, dom[-500:]
    assert int(laid_out.group(1)) == width
    assert int(laid_out.group(2)) <= 0, f"something is {laid_out.group(2)} px wider than its box at {width} px"

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"status_page_{width}.png"
    screenshot.unlink(missing_ok=True)
    # Narrower than Chromium's window: the frame, in a window of the least width it takes.
    url = gateway.make_url("/status?refresh=0") if width >= 500 else server.make_url("/probe")
    _, log = await run_chromium(str(url), tmp_path / "shot", f"--window-size={max(width, 500)},{2400 if width < 500 else 1100}",
                                f"--screenshot={screenshot}")
    assert screenshot.exists(), f"no screenshot: {log[-2000:]}"
    shot_width, _, pixels = decode_png(screenshot.read_bytes())
    assert shot_width == max(width, 500) and len(set(pixels)) > 50
    if UPDATE_DOCS and width >= 1000:  # the README shows a laptop's width and a wide screen's
        (DOCS / f"status-page-{width}.png").write_bytes(screenshot.read_bytes())
