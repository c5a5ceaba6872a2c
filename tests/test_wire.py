"""Every to/from conversion against the golden samples of the real APIs, without any I/O."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ProviderConfig, ProviderKind
from gateway.dialects import COHERE_V2, DEEPINFRA, FIREWORKS, TEI
from gateway.models import RerankRequest, RerankResult, Usage
from gateway.providers import PROVIDER_KINDS
from gateway.providers.base import Batch, InvalidAnswer

GOLDEN = Path(__file__).parent / "golden"
SHARED_WIRE = Path(__file__).parents[2] / "shared" / "wire"


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


# The providers' wire samples live in ../shared/wire, beside the checkout (README, "Tests").
# A clone on its own skips this; CI (CI set, as .ci/run does) has them there and must not skip.
@pytest.mark.skipif(not SHARED_WIRE.is_dir() and not os.environ.get("CI"), reason="../shared/wire is not beside this checkout")
def test_golden_copies_match_the_shared_samples():
    assert SHARED_WIRE.is_dir(), f"CI is set but {SHARED_WIRE} is missing: CI needs ../shared beside the clone"
    assert sorted(SHARED_WIRE.glob("*.json")), f"no samples in {SHARED_WIRE}"
    for sample in SHARED_WIRE.glob("*.json"):
        assert json.loads(sample.read_text()) == golden(sample.name), sample.name


def provider(kind: ProviderKind, **overrides: Any) -> ProviderConfig:
    models = {
        "deepinfra": "Qwen/Qwen3-Reranker-8B",
        "fireworks": "accounts/fireworks/models/qwen3-reranker-8b",
        "cohere": "rerank-v3.5",
        "tei": "BAAI/bge-reranker-large",
    }
    return ProviderConfig(kind=kind, base_url="http://upstream", model=models[kind], **overrides)


# --- provider adapters: to_wire produces the sample request, from_wire reads the sample answer


def test_deepinfra_to_wire_matches_the_sample():
    sample = golden("deepinfra.request.json")
    batch = Batch(sample["queries"], sample["documents"], sample["instruction"])
    assert PROVIDER_KINDS["deepinfra"].to_wire(batch, provider("deepinfra")) == sample
    assert PROVIDER_KINDS["deepinfra"].default_path(provider("deepinfra")) == "/v1/inference/Qwen/Qwen3-Reranker-8B"


def test_deepinfra_from_wire_reads_scores_and_usage():
    answer = PROVIDER_KINDS["deepinfra"].from_wire(golden("deepinfra.response.json"), 2)
    assert answer.scores == [0.9531, 0.0412]
    assert answer.tokens == 42
    assert answer.cost_usd == 0.0000021


def test_fireworks_to_wire_asks_for_every_score_and_carries_the_task():
    sample = golden("fireworks.request.json")
    batch = Batch([sample["query"]] * 2, sample["documents"], sample["task"])
    body = PROVIDER_KINDS["fireworks"].to_wire(batch, provider("fireworks"))
    # The gateway ranks and cuts itself, so upstream always scores all documents.
    assert body == {**sample, "top_n": 2, "return_documents": False}


def test_fireworks_from_wire_maps_by_index_even_when_cut_is_refused():
    sample = golden("fireworks.response.json")  # top_n=1: one result for two documents
    with pytest.raises(InvalidAnswer, match="1 results for 2 documents"):
        PROVIDER_KINDS["fireworks"].from_wire(sample, 2)
    full = {**sample, "data": [{"index": 1, "relevance_score": 0.9531}, {"index": 0, "relevance_score": 0.0412}]}
    answer = PROVIDER_KINDS["fireworks"].from_wire(full, 2)
    assert answer.scores == [0.0412, 0.9531]
    assert answer.tokens == 58
    via_results = {"results": full["data"]}
    assert PROVIDER_KINDS["fireworks"].from_wire(via_results, 2).scores == [0.0412, 0.9531]


def test_cohere_to_wire_and_from_wire():
    sample = golden("cohere-v2.request.json")
    body = PROVIDER_KINDS["cohere"].to_wire(Batch([sample["query"]] * 2, sample["documents"], None), provider("cohere"))
    assert body == {"model": "rerank-v3.5", "query": sample["query"], "documents": sample["documents"],
                    "top_n": 2, "return_documents": False}
    answer = PROVIDER_KINDS["cohere"].from_wire(golden("cohere-v2.response.json"), 2)
    assert answer.scores == [0.0412, 0.9531]
    assert answer.tokens is None  # Cohere bills search units, not tokens


@pytest.mark.parametrize("usage, tokens", [
    ({"meta": {"tokens": {"input_tokens": 17}}}, 17),
    ({"meta": {"billed_units": {"input_tokens": 18}}}, 18),
    ({"usage": {"total_tokens": 19}}, 19),
    ({"tokens": {"input_tokens": 20}}, 20),
])
def test_cohere_compatibles_report_usage_in_their_own_places(usage, tokens):
    payload = {"results": [{"index": 0, "relevance_score": 0.5}], **usage}
    assert PROVIDER_KINDS["cohere"].from_wire(payload, 1).tokens == tokens


@pytest.mark.parametrize("transform, raw", [("none", False), ("sigmoid", True)])
def test_tei_to_wire_asks_for_logits_only_when_it_transforms_them(transform, raw):
    sample = golden("tei.request.json")
    body = PROVIDER_KINDS["tei"].to_wire(Batch([sample["query"]] * 2, sample["texts"], None), provider("tei", score_transform=transform))
    assert body == {**sample, "raw_scores": raw}


def test_tei_from_wire():
    assert PROVIDER_KINDS["tei"].from_wire(golden("tei.response.json"), 2).scores == [0.0412, 0.9531]


@pytest.mark.parametrize("kind, payload, problem", [
    ("deepinfra", {"scores": [0.1]}, "1 scores for 2 documents"),
    ("deepinfra", {"scores": [0.1, "x"]}, "not a number"),
    ("deepinfra", {"result": []}, "no 'scores'"),
    ("deepinfra", {"scores": [0.1, float("inf")]}, "not finite"),
    ("cohere", {"results": [{"index": 0, "relevance_score": 0.1}, {"index": 2, "relevance_score": 0.2}]}, "out of range"),
    ("cohere", {"results": [{"index": 0, "relevance_score": 0.1}, {"index": 0, "relevance_score": 0.2}]}, "appears twice"),
    ("cohere", {"results": [{"index": True, "relevance_score": 0.1}, {"index": 0, "relevance_score": 0.2}]}, "out of range"),
    ("tei", {"not": "a list"}, "not a list"),
    ("fireworks", {"object": "list"}, "no 'data'"),
])
def test_invalid_answers_are_refused(kind, payload, problem):
    with pytest.raises(InvalidAnswer, match=problem):
        PROVIDER_KINDS[kind].from_wire(payload, 2)


# --- dialects: the sample request decodes, the answer encodes in the sample's shape


def result(scores: list[float], tokens: int = 42) -> RerankResult:
    return RerankResult(scores=scores, model="qwen3-reranker-8b", provider="deepinfra", usage=Usage(tokens, 2.1e-6), runtime_ms=31.2)


def test_deepinfra_dialect_round_trip():
    sample = golden("deepinfra.request.json")
    request = DEEPINFRA.decode(sample, {"model": "Qwen/Qwen3-Reranker-8B"})
    assert request == RerankRequest(tuple(sample["queries"]), tuple(sample["documents"]), "Qwen/Qwen3-Reranker-8B", sample["instruction"])
    answer = DEEPINFRA.encode(request, result([0.9531, 0.0412]), "req-1")
    shape = golden("deepinfra.response.json")
    assert set(answer) == set(shape) and set(answer["inference_status"]) == set(shape["inference_status"])
    assert answer["scores"] == [0.9531, 0.0412] and answer["request_id"] == "req-1"
    assert answer["input_tokens"] == answer["inference_status"]["tokens_input"] == 42
    assert answer["inference_status"]["runtime_ms"] == 31


def test_deepinfra_dialect_takes_passages_and_one_query_for_all():
    request = DEEPINFRA.decode({"queries": ["q"], "passages": ["a", "b"]}, {"model": "m"})
    assert request.queries == ("q", "q") and request.documents == ("a", "b")


def test_fireworks_dialect_round_trip():
    sample = golden("fireworks.request.json")
    request = FIREWORKS.decode(sample, {})
    assert (request.model, request.instruction, request.top_n, request.return_documents) == (sample["model"], sample["task"], 1, True)
    answer = FIREWORKS.encode(request, result([0.0412, 0.9531], tokens=58), "req-1")
    shape = golden("fireworks.response.json")
    assert {k: answer[k] for k in shape} == shape
    assert answer["results"] == answer["data"]


def test_cohere_dialect_round_trip():
    sample = golden("cohere-v2.request.json")
    request = COHERE_V2.decode(sample, {})
    assert request.top_n == 2 and request.model == "rerank-v3.5" and request.instruction is None
    answer = COHERE_V2.encode(request, result([0.0412, 0.9531]), "5e0b3c1e-7b6f-4d0a-9a55-0f3f1d2c9b11")
    shape = golden("cohere-v2.response.json")
    assert answer["id"] == shape["id"] and answer["results"] == shape["results"]
    assert answer["meta"]["api_version"] == shape["meta"]["api_version"]
    assert answer["meta"]["billed_units"] == shape["meta"]["billed_units"]
    assert answer["meta"]["tokens"] == {"input_tokens": 42, "output_tokens": 0}


def test_cohere_dialect_search_units_per_hundred_documents():
    request = COHERE_V2.decode({"query": "q", "documents": ["d"] * 250}, {})
    assert COHERE_V2.encode(request, result([0.5] * 250), "r")["meta"]["billed_units"] == {"search_units": 3}


def test_tei_dialect_round_trip():
    sample = golden("tei.request.json")
    request = TEI.decode(sample, {})
    assert request.documents == tuple(sample["texts"]) and not request.raw_scores and not request.return_documents
    assert TEI.encode(request, result([0.0412, 0.9531]), "r") == golden("tei.response.json")


def test_ranking_is_stable_and_cut_once():
    ranked = result([0.5, 0.9, 0.5, 0.1])
    assert ranked.ranking(None) == [1, 0, 2, 3]
    assert ranked.ranking(2) == [1, 0]
    assert ranked.ranking(10) == [1, 0, 2, 3]
