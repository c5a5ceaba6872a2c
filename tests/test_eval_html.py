"""`rerank-gateway eval --html`: one self-contained file with the report's charts, checked in Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.evaluation.beir import load_beir
from gateway.evaluation.html import render_report_html
from gateway.evaluation.run import EvalSettings, evaluate
from tests.support.browser import NEEDS_CHROMIUM, console_lines, decode_png, run_chromium
from tests.support.config import gateway_config
from tests.support.gateway import MODEL, add_fault, emulator_url
from tests.support.processes import REPO, free_port, running

SAMPLE = REPO / "examples" / "eval-word-overlap"  # the README's emulator run: word overlap ranks it
CONFIG = REPO / "examples" / "eval" / "emulator.toml"
ARTIFACTS = Path(__file__).parent / "artifacts"
UPDATE_DOCS = os.environ.get("RERANK_GATEWAY_UPDATE_DOCS") == "1"


def drawn_charts(page: str) -> dict[str, int]:
    return {name: int(n) for name, n in re.findall(r'data-chart="([a-z0-9_]+)" data-points="(\d+)"', page)}


async def test_the_page_draws_every_provider_that_scored_beside_bm25(emulator: Any) -> None:
    from gateway.config import parse_config

    await add_fault(emulator, "fireworks", "random")
    await add_fault(emulator, "tei", "status", status=500)
    config = parse_config(gateway_config(emulator_url(emulator), ["deepinfra", "fireworks", "tei"]))
    report = await evaluate(config, MODEL, load_beir(SAMPLE), EvalSettings())
    page = render_report_html(report)
    # Two bars (NDCG@10, P@5) for BM25 and for each of the two providers that scored; tei failed.
    assert drawn_charts(page) == {"quality": 6, "cost": 2, "p50": 2}
    assert f"ndcg@10 {report['providers']['deepinfra']['ndcg@10']:.3f}" in page
    assert f"ndcg@10 {report['lexical']['ndcg@10']:.3f}" in page
    assert "tei: error: HTTP 500" in page
    # Per language of the queries (the sample set: Russian and English, told by script).
    section = page[page.index('data-section="by-language"'):]
    for language, count in report["languages"].items():
        figures = report["providers"]["deepinfra"]["by_language"][language]
        assert f"{language} ({count})" in section
        assert f"{figures['ndcg@10']:.3f} · {figures['p@5']:.3f}" in section
    # Self-contained: no script, nothing fetched from elsewhere.
    assert "<script" not in page.lower() and not re.search(r"(src|href)=\"?(https?:)?//", page)


def test_untrusted_names_are_escaped_and_a_recommendation_is_shown() -> None:
    metrics = {"p@1": 1.0, "p@5": 0.4, "ndcg@10": 0.9, "mrr@10": 1.0, "latency_p50_ms": 3.0, "usd_per_1k_queries": 0.01}
    page = render_report_html({
        "model": "<m>", "queries": 2, "k": 10, "first_stage": "bm25 top 40", "reference": "<p>",
        "providers": {"<p>": metrics, "x": {"skipped": "key <unset>"}}, "lexical": {"p@5": 0.3, "ndcg@10": 0.8},
        "recommendation": {"metric": "ndcg@10", "margin": 0.02, "best": 0.9, "fallback": ["<p>"],
                           "left_out": {"x": "skipped: key <unset>"}},
    })
    assert "<m>" not in page and "&lt;m&gt;" in page and "#1 &lt;p&gt; (reference)" in page
    assert "key &lt;unset&gt;" in page and "<code>fallback = [&quot;&lt;p&gt;&quot;]</code>" in page
    assert drawn_charts(page) == {"quality": 4, "cost": 1, "p50": 1}


@pytest.mark.browser
@pytest.mark.processes
@pytest.mark.slow
@NEEDS_CHROMIUM
async def test_eval_html_renders_in_chromium(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "eval.toml"
    config.write_text(CONFIG.read_text().replace("9000", str(port)))
    page, out = tmp_path / "report.html", tmp_path / "report.json"
    with running(["emulate", "--port", str(port)], port):
        async with aiohttp.ClientSession() as session:
            for fault in ({"provider": "fireworks", "mode": "random"}, {"provider": "cohere", "mode": "rescale"}):
                async with session.post(f"http://127.0.0.1:{port}/_emulator/faults", json=fault) as response:
                    assert response.status == 200
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "eval", "--config", str(config), "--data", str(SAMPLE),
             "--out", str(out), "--html", str(page)],
            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "EMULATOR_KEY": "dev"})
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert page.read_text() == render_report_html(report)  # the file is the JSON report, drawn

    dom, log = await run_chromium(page.as_uri(), tmp_path / "dom", "--dump-dom")
    assert console_lines(log) == [], console_lines(log)
    scored = sum(1 for entry in report["providers"].values() if "ndcg@10" in entry)
    assert drawn_charts(dom.decode()) == {"quality": 2 * (scored + 1), "cost": scored, "p50": scored}

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "eval_report.png"
    screenshot.unlink(missing_ok=True)
    _, log = await run_chromium(page.as_uri(), tmp_path / "shot", "--window-size=1100,780", f"--screenshot={screenshot}")
    assert screenshot.exists(), log[-2000:]
    width, height, pixels = decode_png(screenshot.read_bytes())
    assert (width, height) == (1100, 780) and len(set(pixels)) > 50
    if UPDATE_DOCS:
        (REPO / "docs" / "eval-report.png").write_bytes(screenshot.read_bytes())


def test_each_languages_own_recommendation_is_shown_beside_its_figures() -> None:
    metrics = {"p@5": 0.4, "ndcg@10": 0.9, "usd_per_1k_queries": 0.01}
    page = render_report_html({
        "model": "m", "queries": 4, "k": 10, "first_stage": "bm25 top 40", "reference": "a",
        "languages": {"latin": 2, "cyrillic": 2},
        "providers": {"a": {**metrics, "by_language": {"latin": {"ndcg@10": 0.95, "p@5": 0.4},
                                                       "cyrillic": {"ndcg@10": 0.31, "p@5": 0.2}}},
                      "b": {**metrics, "by_language": {"latin": {"ndcg@10": 0.85, "p@5": 0.4},
                                                       "cyrillic": {"ndcg@10": 0.93, "p@5": 0.4}}}},
        "lexical": {"p@5": 0.3, "ndcg@10": 0.5},
        "recommendation_by_language": {"cyrillic": {"metric": "ndcg@10", "margin": 0.02, "best": 0.93,
                                                    "fallback": ["b"], "left_out": {"a": "NDCG 0.310"}}},
    })
    section = page[page.index('data-section="by-language"'):]
    assert "cyrillic (2)" in section and "0.310 · 0.200" in section and "0.930 · 0.400" in section
    assert "<b>cyrillic:</b>" in section and "<code>fallback = [&quot;b&quot;]</code>" in section
