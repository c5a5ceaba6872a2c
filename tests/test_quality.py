"""The quality guard's pure parts: canary sets, the judge, agreement measures, the tracker, probes."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, strategies as st

from gateway.config import ProviderConfig, QualityConfig
from gateway.emulator import emulated_score, misbehaving_score
from gateway.errors import ProviderFailure
from gateway.models import Batch, Usage
from gateway.providers.client import ProviderClient
from gateway.quality import (
    AgreementTracker,
    CanaryError,
    CanaryLine,
    CanaryOutcome,
    agreement,
    builtin_canary,
    judge,
    kendall_tau_b,
    load_canary,
    mean_absolute_difference,
    parse_canary,
    run_canary,
)
from gateway.resilience.lexical import lexical_scores
from tests.support.config import gateway_config
from tests.support.gateway import EMULATOR_KEY, add_fault, emulator_url

LINE = '{"query": "q", "relevant": ["r1", "r2"], "irrelevant": ["i1"]}'


def scores_by(score: Any, lines: Sequence[CanaryLine]) -> list[list[float]]:
    return [[score(line.query, doc) for doc in line.documents] for line in lines]


# --- canary files ----------------------------------------------------------------------------

def test_parse_keeps_line_numbers_and_skips_blank_lines() -> None:
    text = "\n" + LINE + "\n\n" + LINE.replace('"q"', '"q2"')[:-1] + ', "instruction": "be strict"}\n'
    lines = parse_canary(text, "set.jsonl")
    assert [(line.line, line.query, line.instruction) for line in lines] == [
        (2, "q", None), (4, "q2", "be strict")]
    assert lines[0].documents == ("r1", "r2", "i1")
    assert lines[1].where() == "set.jsonl line 4"


@pytest.mark.parametrize(("line", "problem"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"query": "q", "relevant": ["r"], "irrelevant": ["i"], "notes": 1}', "unknown key(s) 'notes'"),
    ('{"relevant": ["r"], "irrelevant": ["i"]}', "'query' must be a non-empty string"),
    ('{"query": " ", "relevant": ["r"], "irrelevant": ["i"]}', "'query' must be a non-empty string"),
    ('{"query": "q", "relevant": [], "irrelevant": ["i"]}', "'relevant' must be a non-empty list"),
    ('{"query": "q", "relevant": ["r"], "irrelevant": "i"}', "'irrelevant' must be a non-empty list"),
    ('{"query": "q", "relevant": ["r", 3], "irrelevant": ["i"]}', "'relevant' must be a non-empty list"),
    ('{"query": "q", "relevant": ["r"], "irrelevant": ["i"], "instruction": 1}', "'instruction' must be a string"),
    ('{"query": "q", "relevant": ["r"], "irrelevant": ["r"]}', "both relevant and irrelevant: 'r'"),
])
def test_bad_lines_name_source_and_line(line: str, problem: str) -> None:
    with pytest.raises(CanaryError) as error:
        parse_canary(LINE + "\n" + line + "\n", "set.jsonl")
    assert str(error.value).startswith("set.jsonl line 2: ")
    assert problem in str(error.value)


def test_an_empty_set_is_an_error() -> None:
    with pytest.raises(CanaryError, match=r"set\.jsonl: no canary lines"):
        parse_canary("\n  \n", "set.jsonl")


def test_load_reads_utf8_and_names_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(LINE.replace('"q"', '"вопрос"'), encoding="utf-8")
    assert load_canary(path)[0].query == "вопрос"
    assert load_canary(path)[0].source == str(path)
    with pytest.raises(CanaryError, match=r"missing\.jsonl: cannot read"):
        load_canary(tmp_path / "missing.jsonl")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(CanaryError, match=r"c\.jsonl: not UTF-8"):
        load_canary(path)


# --- the built-in set --------------------------------------------------------------------------

def test_builtin_set_has_a_dozen_lines_in_russian_english_and_chinese() -> None:
    lines = builtin_canary()
    assert len(lines) >= 12
    scripts = {"ru": r"[а-яё]", "en": r"^[\x00-\x7f]+$", "zh": r"[\u4e00-\u9fff]"}
    counts = {name: sum(bool(re.search(p, line.query.lower())) for line in lines)
              for name, p in scripts.items()}
    assert counts["ru"] >= 5 and counts["en"] >= 3 and counts["zh"] >= 3
    assert all(line.instruction is None for line in lines)  # so cohere and tei kinds can run it
    assert {line.language for line in lines} == {"ru", "en", "zh"}


def _bigrams(text: str) -> set[str]:
    text = text.lower()
    return {text[i:i + 2] for i in range(len(text) - 1) if text[i:i + 2].isalnum()}


def test_builtin_set_cannot_be_passed_by_word_overlap() -> None:
    """Answers paraphrase the query, and hard negatives share more of its words than answers do."""
    lines = builtin_canary()
    for line in lines:
        assert not any(line.query.rstrip("?\uff1f") in passage for passage in line.relevant), line.where()
    # a hard negative: an irrelevant passage sharing at least as many of the query's character
    # pairs as some relevant passage (character pairs, so Chinese without spaces counts too)
    hard = [line for line in lines
            if max(len(_bigrams(line.query) & _bigrams(p)) for p in line.irrelevant)
            >= min(len(_bigrams(line.query) & _bigrams(p)) for p in line.relevant)]
    assert len(hard) >= 2 * len(lines) // 3
    def judged(scorer: Any) -> Any:
        return judge(lines, [scorer(line.query, list(line.documents)) for line in lines],
                     QualityConfig().canary_pass_share)

    # BM25 and shared words order no more pairs than a coin would, in any language
    for scorer in (lexical_scores, lambda q, docs: [len(set(q.lower().split()) & set(d.lower().split())) for d in docs]):
        verdict = judged(scorer)
        assert all(lang.share <= 0.5 for lang in verdict.languages), verdict.reason()
    # shared character pairs credit Russian word forms, yet fail every language too
    verdict = judged(lambda q, docs: [len(_bigrams(q) & _bigrams(d)) for d in docs])
    assert not any(lang.passes(verdict.pass_share) for lang in verdict.languages), verdict.reason()


def test_builtin_set_passes_on_honest_emulator_scores() -> None:
    lines = builtin_canary()
    verdict = judge(lines, scores_by(emulated_score, lines))
    assert verdict.passed, verdict.reason()
    assert verdict.worst.margin > 0.1  # room to spare, not a coin flip


@pytest.mark.parametrize("mode", ["template", "random"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_builtin_set_fails_a_wrong_template_and_random_scores(mode: str, seed: int) -> None:
    lines = builtin_canary()
    verdict = judge(lines, scores_by(lambda q, d: misbehaving_score(mode, q, d, seed=seed), lines))
    assert not verdict.passed
    assert len(verdict.failures) >= 3


def test_builtin_set_cannot_see_a_scale_but_agreement_does() -> None:
    """Another scale keeps every order, so the canary passes; only agreement tells."""
    lines = builtin_canary()
    honest = scores_by(emulated_score, lines)
    rescaled = scores_by(lambda q, d: misbehaving_score("rescale", q, d), lines)
    assert judge(lines, rescaled).passed
    tracker = AgreementTracker()
    for ours, theirs in zip(honest, rescaled):
        tracker.add(ours, theirs)
    measured = tracker.current()
    assert measured is not None
    assert measured.kendall_tau == 1.0 and measured.mae > 0.05
    assert not tracker.within(0.05)


# --- the judge ---------------------------------------------------------------------------------

def test_judge_margins_and_the_failing_line() -> None:
    lines = parse_canary(LINE + "\n" + LINE.replace('"q"', '"other"') + "\n", "set.jsonl")
    verdict = judge(lines, [[0.9, 0.7, 0.2], [0.8, 0.3, 0.45]])
    assert [line.margin for line in verdict.lines] == pytest.approx([0.5, -0.15])
    assert not verdict.passed
    assert [failure.line.line for failure in verdict.failures] == [2]
    assert verdict.worst.line.line == 2
    assert "failed in latin: 3 of 4 canary pairs ordered (latin 3/4;" in verdict.reason()
    assert "1 of 2 lines with a pair out of order" in verdict.reason()
    assert "set.jsonl line 2 ('other'): margin -0.150" in verdict.reason()


def test_a_tie_fails_and_a_pass_reports_the_narrowest_line() -> None:
    lines = parse_canary(LINE, "s")
    assert not judge(lines, [[0.5, 0.6, 0.5]]).passed
    passed = judge(lines, [[0.5, 0.6, 0.4]])
    assert passed.passed and passed.reason() == (
        "passed 1 canary lines: 2 of 2 canary pairs ordered (latin 2/2; rule: at least 100% of "
        "(relevant, irrelevant) pairs ordered in every language); narrowest s line 1 ('q'): margin +0.100")


def _line(language: str, query: str) -> str:
    return orjson.dumps({"query": query, "relevant": ["r1", "r2"], "irrelevant": ["i1", "i2"],
                         "language": language}).decode()


def test_the_verdict_is_graded_per_language_against_the_share_threshold() -> None:
    lines = parse_canary("\n".join([_line("en", "a"), _line("en", "b"), _line("ru", "c")]), "s")
    # en: 4/4 then 3/4 ordered; ru: 2/4 (a good English model that cannot read Russian)
    scores = [[0.9, 0.8, 0.1, 0.2], [0.9, 0.3, 0.1, 0.5], [0.9, 0.1, 0.5, 0.2]]
    strict, graded, lax = (judge(lines, scores, share) for share in (1.0, 0.8, 0.5))
    assert (strict.ordered, strict.pairs) == (9, 12) and strict.share == pytest.approx(0.75)
    by_language = {lang.language: lang for lang in graded.languages}
    assert (by_language["en"].ordered, by_language["en"].pairs, by_language["en"].lines) == (7, 8, 2)
    assert by_language["en"].worst_margin == pytest.approx(-0.2)
    assert (by_language["ru"].ordered, by_language["ru"].pairs) == (2, 4)
    assert by_language["ru"].worst_margin == pytest.approx(-0.4)
    assert not strict.passed and not graded.passed and lax.passed  # ru 50% holds only the lax rule
    assert graded.reason().startswith("failed in ru: 9 of 12 canary pairs ordered (en 7/8, ru 2/4; rule: at least 80%")
    figures = graded.as_json()
    assert figures["languages"] == {
        "en": {"passed": True, "lines": 2, "ordered_pairs": 7, "pairs": 8, "share": 0.875, "worst_margin": -0.2},
        "ru": {"passed": False, "lines": 1, "ordered_pairs": 2, "pairs": 4, "share": 0.5, "worst_margin": -0.4},
    }
    assert (figures["passed"], figures["pass_share"], figures["worst_margin"]) == (False, 0.8, -0.4)
    with pytest.raises(ValueError, match="pass_share"):
        judge(lines, scores, 0)
    outcome = CanaryOutcome(lines, tuple(map(tuple, scores)), strict, Usage())
    assert outcome.rejudged(0.5).verdict == lax and outcome.rejudged(0.5).scores == outcome.scores


def test_a_line_without_a_language_is_graded_by_its_script() -> None:
    rows = [{"query": q, "relevant": ["r"], "irrelevant": ["i"]} for q in ("Сколько стоит", "多长时间", "how long", "42")]
    lines = parse_canary("\n".join(orjson.dumps(row).decode() for row in rows), "s")
    assert [line.language for line in lines] == ["cyrillic", "han", "latin", "other"]
    with pytest.raises(CanaryError, match="'language' must be a non-empty string"):
        parse_canary(orjson.dumps({**rows[0], "language": ""}).decode(), "s")


def test_judge_refuses_scores_that_do_not_fit() -> None:
    lines = parse_canary(LINE, "s")
    with pytest.raises(ValueError, match="2 score lists for 1 canary lines"):
        judge(lines, [[1, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="s line 1: 2 scores for 3 passages"):
        judge(lines, [[1, 0]])


# --- agreement measures --------------------------------------------------------------------------

def brute_force_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """The definition, pair by pair: the oracle for the O(n log n) version."""
    concordant = discordant = tied_x = tied_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        tied_x += dx == 0
        tied_y += dy == 0
        concordant += dx * dy > 0
        discordant += dx * dy < 0
    pairs = len(x) * (len(x) - 1) // 2
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return None if denominator == 0 else (concordant - discordant) / denominator


def test_tau_of_the_same_order_is_1_and_of_the_reverse_is_minus_1() -> None:
    x = [0.1, 0.4, 0.35, 0.8, 0.05]
    assert kendall_tau_b(x, [v * 10 for v in x]) == 1.0
    assert kendall_tau_b(x, [-v for v in x]) == -1.0


def test_tau_b_with_ties_has_the_textbook_value() -> None:
    # 6 pairs: one tied in x, none in y; C = 3, D = 2: (3 - 2) / sqrt((6 - 1) * 6)
    assert kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 1.5]) == pytest.approx(1 / math.sqrt(30))
    # ties on both sides, one of them the same pair: (0,1) tied in both, C = 5, D = 0
    assert kendall_tau_b([1, 1, 2, 3], [5, 5, 6, 7]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


@pytest.mark.parametrize(("x", "y"), [([], []), ([0.3], [0.4]), ([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])])
def test_tau_is_undefined_without_two_distinct_values(x: list[float], y: list[float]) -> None:
    assert kendall_tau_b(x, y) is None


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=0, max_size=40))
def test_tau_b_matches_the_pairwise_definition(pairs: list[tuple[int, int]]) -> None:
    x, y = [a / 5 for a, _ in pairs], [b / 5 for _, b in pairs]
    expected = brute_force_tau_b(x, y)
    found = kendall_tau_b(x, y)
    assert (found is None) == (expected is None)
    if expected is not None:
        assert found == pytest.approx(expected, abs=1e-12)


def test_mean_absolute_difference_and_agreement() -> None:
    assert mean_absolute_difference([0.1, 0.5, 0.9], [0.2, 0.5, 0.6]) == pytest.approx(0.4 / 3)
    measured = agreement([0.1, 0.5, 0.9], [0.2, 0.5, 0.6])
    assert measured.pairs == 3 and measured.kendall_tau == 1.0
    assert measured.within(0.14) and not measured.within(0.13)
    with pytest.raises(ValueError, match="different lengths: 2 and 1"):
        mean_absolute_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="no pairs"):
        mean_absolute_difference([], [])


# --- the rolling tracker ---------------------------------------------------------------------------

def test_tracker_is_unknown_until_enough_pairs() -> None:
    tracker = AgreementTracker(min_pairs=4)
    tracker.add([0.1, 0.9], [0.1, 0.9])
    tracker.add([], [])  # nothing compared: ignored
    assert tracker.current() is None and not tracker.within(1.0)
    tracker.add([0.2, 0.8], [0.2, 0.8])
    assert tracker.current() is not None and tracker.within(0.0)


def test_tracker_pools_mae_over_pairs_and_weighs_tau_by_pairs() -> None:
    tracker = AgreementTracker(min_pairs=1)
    tracker.add([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])  # 4 pairs, |d| = 0, tau 1
    tracker.add([0.1, 0.9], [0.9, 0.1])  # 2 pairs, |d| = 0.8 each, tau -1
    measured = tracker.current()
    assert measured is not None
    assert measured.mae == pytest.approx(1.6 / 6)
    assert measured.kendall_tau == pytest.approx((4 * 1 - 2 * 1) / 6)
    assert measured.pairs == 6


def test_tracker_forgets_the_oldest_samples_beyond_its_window() -> None:
    tracker = AgreementTracker(max_samples=3, min_pairs=1)
    tracker.add([0.0, 1.0], [1.0, 0.0])  # wildly off; pushed out by three agreeing samples
    for _ in range(3):
        tracker.add([0.2, 0.4], [0.25, 0.45])
    measured = tracker.current()
    assert measured is not None and measured.pairs == 6
    assert measured.mae == pytest.approx(0.05) and measured.kendall_tau == 1.0
    tracker.clear()
    assert tracker.current() is None


def test_tracker_tau_is_none_when_no_sample_has_one() -> None:
    tracker = AgreementTracker(min_pairs=1)
    tracker.add([0.5], [0.7])
    measured = tracker.current()
    assert measured is not None and measured.kendall_tau is None and measured.mae == pytest.approx(0.2)


@pytest.mark.parametrize(("options", "problem"), [({"max_samples": 0}, "max_samples"),
                                                  ({"min_pairs": 0}, "min_pairs")])
def test_tracker_refuses_empty_bounds(options: dict[str, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AgreementTracker(**options)


# --- probes ------------------------------------------------------------------------------------------

async def test_run_canary_groups_by_instruction_and_splits_scores_back() -> None:
    text = "\n".join([LINE, LINE.replace('"q"', '"q2"')[:-1] + ', "instruction": "strict"}',
                      LINE.replace('"q"', '"q3"')])
    lines = parse_canary(text, "s")
    calls: list[tuple[list[str], str | None]] = []

    async def score(pairs: Batch) -> tuple[list[float], Usage]:
        calls.append((list(pairs.queries), pairs.instruction))
        return [0.9 if doc.startswith("r") else 0.1 for doc in pairs.documents], Usage(tokens=len(pairs), cost_usd=0.5)

    outcome = await run_canary(lines, score)
    assert [(sorted(set(queries)), instruction) for queries, instruction in calls] == [
        (["q", "q3"], None), (["q2"], "strict")]
    assert outcome.scores == ((0.9, 0.9, 0.1),) * 3
    assert outcome.verdict.passed
    assert (outcome.usage.tokens, outcome.usage.cost_usd) == (9, 1.0)


async def test_outcomes_feed_a_tracker_line_by_line() -> None:
    lines = builtin_canary()

    def scorer(mode: str | None) -> Any:
        async def score(batch: Batch) -> tuple[list[float], Usage]:
            pairs = zip(batch.queries, batch.documents)
            if mode is None:
                return [emulated_score(q, d, batch.instruction) for q, d in pairs], Usage()
            return [misbehaving_score(mode, q, d, batch.instruction) for q, d in pairs], Usage()
        return score

    reference = await run_canary(lines, scorer(None))
    for mode, agrees in ((None, True), ("rescale", False), ("template", False)):
        tracker = AgreementTracker()
        (await run_canary(lines, scorer(mode))).feed(tracker, reference)
        assert tracker.within(0.05) is agrees, mode
    with pytest.raises(ValueError, match="different canary sets"):
        reference.feed(AgreementTracker(), await run_canary(lines[:2], scorer(None)))


@pytest.mark.parametrize("provider", ["deepinfra", "fireworks", "cohere", "tei"])
async def test_probes_over_real_sockets_pass_honest_and_fail_mis_served_providers(
        emulator: Any, provider: str) -> None:
    config = ProviderConfig.model_validate(gateway_config(emulator_url(emulator))["providers"][provider])
    client = ProviderClient(provider, config, EMULATOR_KEY)
    await client.start()
    try:
        honest = await run_canary(builtin_canary(), client.score)
        assert honest.verdict.passed, honest.verdict.reason()
        # Cohere's answers report search units and TEI's nothing: their probes are billed by estimate
        assert honest.usage.tokens > 0
        assert (honest.usage.estimated_tokens == honest.usage.tokens) is (provider in ("cohere", "tei"))
        await add_fault(emulator, provider, "template")
        wrong = await run_canary(builtin_canary(), client.score)
        assert not wrong.verdict.passed
        assert "built-in canary line" in wrong.verdict.reason()
        await emulator.delete("/_emulator/faults")
        await add_fault(emulator, provider, "status", status=500)
        with pytest.raises(ProviderFailure):  # no verdict without answers
            await run_canary(builtin_canary(), client.score)
    finally:
        await client.close()
