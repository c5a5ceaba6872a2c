"""A query's language, as a model's canary names its languages (gateway.quality.languages), and
the plan each language then follows: scripts, lingua for several Latin-script languages,
uncovered scripts, mixed batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.models import Usage
from gateway.quality.canary import CanaryLine, load_canary
from gateway.quality.judge import judge
from gateway.quality.languages import MIXED, QueryLanguages
from gateway.quality.probe import CanaryOutcome
from gateway.web.edge import LIVE
from tests.support.config import MODEL

pytest.importorskip("lingua", reason="the languages extra (lingua-language-detector) is not installed")

LINES = [
    ("how do I reset my password", "Open settings and choose reset password.", "The museum opens at nine.", "en"),
    ("what does a bankruptcy cost", "Filing for bankruptcy out of court is free.", "Borscht needs beetroot.", "en"),
    ("como redefinir a minha senha", "Abra as configurações e escolha redefinir senha.", "O museu abre às nove.", "pt"),
    ("quanto custa uma falência", "Pedir falência fora do tribunal é gratuito.", "O bacalhau precisa de sal.", "pt"),
]
SHORT_QUERIES = {
    "en": ["password reset", "cheap flights to lisbon", "how tall is the eiffel tower", "train schedule tomorrow"],
    "pt": ["redefinir senha", "voos baratos para lisboa", "horário do comboio amanhã", "quanto custa o bilhete"],
}


def canary_lines() -> list[CanaryLine]:
    return [CanaryLine(query, (relevant,), (irrelevant,), language=language)
            for query, relevant, irrelevant, language in LINES]


def ready(languages: QueryLanguages) -> QueryLanguages:
    assert languages.detector is not None and languages.detector.wait_ready(30)
    return languages


def test_scripts_name_the_canarys_language_and_uncovered_scripts_are_languages_of_their_own() -> None:
    languages = QueryLanguages([CanaryLine("how much", ("a",), ("b",), language="en"),
                                CanaryLine("сколько стоит", ("a",), ("b",), language="ru")])
    assert languages.detector is None  # one language in Latin script: nothing to detect
    assert languages.languages == ("en", "han", "other", "ru")
    assert languages.of("Wie viel kostet das") == "en"  # Latin, and the canary's only Latin language
    assert languages.of("сколько стоит банкротство") == "ru"
    assert languages.of("通过多功能中心申请个人破产") == "han"  # no canary line in Han: its own
    assert languages.of("12345") == "other"
    assert languages.of_batch(["how much", "how much is it"]) == "en"
    assert languages.of_batch(["how much", "сколько"]) == MIXED


def test_lingua_tells_the_canarys_latin_languages_apart_on_short_queries() -> None:
    languages = ready(QueryLanguages(canary_lines()))
    assert languages.languages == ("cyrillic", "en", "han", "other", "pt")
    told = {language: [languages.of(query) for query in queries] for language, queries in SHORT_QUERIES.items()}
    assert told == {language: [language] * len(queries) for language, queries in SHORT_QUERIES.items()}


def test_without_a_detector_latin_queries_are_mixed(monkeypatch) -> None:
    """lingua missing (the languages extra left out), or its models still loading: such a query's
    language cannot be told, so it follows the plan that shares only what shares everywhere."""
    monkeypatch.setitem(__import__("sys").modules, "lingua", None)
    languages = QueryLanguages(canary_lines())
    assert languages.detector is None
    assert languages.of("password reset") == MIXED
    assert languages.of("сколько") == "cyrillic"


def failing_in(language: str, lines: list[CanaryLine]) -> CanaryOutcome:
    """Canary scores that order every line right but those of `language`, which are reversed."""
    scores = tuple((0.1, 0.9) if line.language == language else (0.9, 0.1) for line in lines)
    return CanaryOutcome(tuple(lines), scores, judge(lines, scores), Usage())


async def test_a_provider_failing_portuguese_serves_english_and_portuguese_goes_to_the_next(
        make_gateway, tmp_path: Path) -> None:
    """Ops' canary holds English and Portuguese lines, both in Latin script: only lingua tells the
    queries apart. deepinfra fails the Portuguese lines: Portuguese queries go to fireworks,
    flagged nowhere; English ones stay with deepinfra, which ops put first."""
    canary = tmp_path / "canary.jsonl"
    canary.write_text("".join(json.dumps({"query": q, "relevant": [r], "irrelevant": [i], "language": language}) + "\n"
                              for q, r, i, language in LINES))
    gateway = await make_gateway(models={MODEL: {"quality": {"canary": str(canary)}}})
    live = gateway.app[LIVE]
    router = live.current.router
    ready(live.current.quality_guard.languages[MODEL])
    lines = list(load_canary(canary))
    board = live.shared.quality_board
    board.record_verdict(MODEL, "deepinfra", failing_in("pt", lines))
    board.record_verdict(MODEL, "fireworks", failing_in("none", lines))
    for language, queries in SHORT_QUERIES.items():
        for query in queries:
            assert router.table.language_of(MODEL, [query]) == language, query
            response = await gateway.post("/v1/rerank", json={"query": query, "documents": ["a", "b"]})
            assert response.status == 200
            assert response.headers["X-Rerank-Provider"] == {"en": "deepinfra", "pt": "fireworks"}[language], query
            assert "X-Rerank-Quality" not in response.headers
