"""The provider emulator: wire shapes against the golden samples, scores, faults, stats."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from typing import Any

import aiohttp
import pytest

from gateway.emulator import EmulatorConfig, create_emulator_app, emulated_logit, emulated_score
from tests.support.emulator_calls import (
    DEEPINFRA,
    DOCS,
    INSTRUCTION,
    PATHS,
    QUERY,
    add_fault,
    golden,
    indices,
    post_json,
    request_body,
    score_list,
    shape,
)


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_emulator_app())


# --- the score function ------------------------------------------------------------------

def test_score_is_deterministic_bounded_and_sigmoid_of_logit() -> None:
    score = emulated_score(QUERY, DOCS[1], INSTRUCTION)
    assert score == emulated_score(QUERY, DOCS[1], INSTRUCTION)
    assert 0.0 < score < 1.0
    assert score == pytest.approx(1 / (1 + math.exp(-emulated_logit(QUERY, DOCS[1], INSTRUCTION))))
    assert -3.5 <= emulated_logit(QUERY, DOCS[4]) <= 3.5


def test_score_rewards_overlap_and_instruction_moves_it_slightly() -> None:
    assert emulated_score(QUERY, DOCS[1]) > emulated_score(QUERY, DOCS[4])
    full = emulated_logit("red apple", "An apple, RED and ripe")
    none = emulated_logit("red apple", "blue sky")
    assert full >= 2.5 and none <= -2.5
    shifted = emulated_logit(QUERY, DOCS[1], INSTRUCTION)
    assert shifted != emulated_logit(QUERY, DOCS[1])
    assert abs(shifted - emulated_logit(QUERY, DOCS[1])) <= 1.0


def test_words_are_unicode_alphanumeric() -> None:
    assert emulated_logit("стоимость банкротства", "Банкротства стоимость: 0 ₽") >= 2.5
    assert emulated_logit("snake_case", "snake case") >= 2.5  # "_" splits words


# --- wire shapes against the golden samples ------------------------------------------------

@pytest.mark.parametrize(("path", "sample"), [
    (DEEPINFRA, "deepinfra"), ("/inference/v1/rerank", "fireworks"),
    ("/v2/rerank", "cohere-v2"), ("/v1/rerank", "cohere-v2"), ("/rerank", "tei"),
])
async def test_answers_have_exactly_the_golden_shape(client: Any, path: str, sample: str) -> None:
    resp = await client.post(path, json=golden(f"{sample}.request.json"))
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert shape(await resp.json()) == shape(golden(f"{sample}.response.json"))


async def test_cohere_api_version_follows_the_path(client: Any) -> None:
    body = golden("cohere-v2.request.json")
    for version in ("1", "2"):
        answer = await (await client.post(f"/v{version}/rerank", json=body)).json()
        assert answer["meta"]["api_version"] == {"version": version}


# --- scores, order, top_n, documents --------------------------------------------------------

async def test_deepinfra_scores_pairs_in_input_order(client: Any) -> None:
    queries = [QUERY, "kazan weather", QUERY]
    docs = [DOCS[4], DOCS[2], DOCS[1]]
    body = {"queries": queries, "documents": docs, "instruction": INSTRUCTION}
    status, answer = await post_json(client, "deepinfra", body)
    assert status == 200
    assert answer["scores"] == [emulated_score(q, d, INSTRUCTION) for q, d in zip(queries, docs)]
    tokens = sum(len(q) + len(d) + len(INSTRUCTION) for q, d in zip(queries, docs)) // 4
    assert answer["input_tokens"] == answer["inference_status"]["tokens_input"] == tokens
    assert answer["inference_status"]["cost"] == pytest.approx(tokens * 0.05 / 1e6)
    assert answer["inference_status"]["status"] == "succeeded"
    assert isinstance(answer["inference_status"]["runtime_ms"], int)


async def test_deepinfra_tokens_are_at_least_one_per_pair(client: Any) -> None:
    _, answer = await post_json(client, "deepinfra", {"queries": ["a", "b"], "documents": ["", ""]})
    assert answer["input_tokens"] == 2


async def test_fireworks_sorts_cuts_and_uses_task_as_instruction(client: Any) -> None:
    body = request_body("fireworks", top_n=3, return_documents=True, task=INSTRUCTION)
    status, answer = await post_json(client, "fireworks", body)
    assert status == 200
    expected = sorted(((emulated_score(QUERY, d, INSTRUCTION), i) for i, d in enumerate(DOCS)),
                      reverse=True)[:3]
    assert [(item["relevance_score"], item["index"]) for item in answer["data"]] == expected
    assert [item["document"] for item in answer["data"]] == [DOCS[i] for _, i in expected]
    assert answer["model"] == "m"
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0


async def test_fireworks_without_return_documents_has_no_document(client: Any) -> None:
    _, answer = await post_json(client, "fireworks", request_body("fireworks"))
    assert len(answer["data"]) == len(DOCS)
    assert all(set(item) == {"index", "relevance_score"} for item in answer["data"])


async def test_cohere_accepts_text_objects_and_returns_documents(client: Any) -> None:
    docs: list[Any] = [DOCS[0], {"text": DOCS[1]}, DOCS[3]]
    body = {"model": "rerank-v3.5", "query": QUERY, "documents": docs, "return_documents": True}
    status, answer = await post_json(client, "cohere", body)
    assert status == 200
    texts = [DOCS[0], DOCS[1], DOCS[3]]
    expected = sorted(((emulated_score(QUERY, t), i) for i, t in enumerate(texts)), reverse=True)
    assert [(r["relevance_score"], r["index"]) for r in answer["results"]] == expected
    assert [r["document"] for r in answer["results"]] == [{"text": texts[i]} for _, i in expected]
    assert answer["meta"]["billed_units"] == {"search_units": 1}
    assert len(answer["id"]) == 36


async def test_cohere_top_n_larger_than_documents_returns_all(client: Any) -> None:
    _, answer = await post_json(client, "cohere", request_body("cohere", top_n=50))
    assert sorted(indices(answer, "cohere")) == list(range(len(DOCS)))


@pytest.mark.parametrize(("raw", "score"), [(True, emulated_logit), (False, emulated_score)])
async def test_tei_scores_raw_logits_or_sigmoid(client: Any, raw: bool, score: Any) -> None:
    body = request_body("tei", raw_scores=raw, return_text=True, truncate=True)
    status, answer = await post_json(client, "tei", body)
    assert status == 200
    expected = sorted(((score(QUERY, d), i) for i, d in enumerate(DOCS)), reverse=True)
    assert [(item["score"], item["index"]) for item in answer] == expected
    assert [item["text"] for item in answer] == [DOCS[i] for _, i in expected]


# --- bad requests ----------------------------------------------------------------------------

ERROR_SHAPES = {"deepinfra": lambda a: a["detail"]["error"], "fireworks": lambda a: a["error"],
                "cohere": lambda a: a["message"], "tei": lambda a: a["error"]}


@pytest.mark.parametrize("provider", list(PATHS))
@pytest.mark.parametrize("body", [
    b"not json", b"", b"[1, 2]", b'{"query": 1}', b'{"query": "q", "documents": "d", "texts": "d"}',
    b'{"model": "m", "query": "q", "queries": ["q"], "documents": [1], "texts": [1]}',
])
async def test_bad_bodies_are_422_in_the_provider_error_shape(client: Any, provider: str,
                                                              body: bytes) -> None:
    resp = await client.post(PATHS[provider], data=body)
    assert resp.status == 422
    assert isinstance(ERROR_SHAPES[provider](await resp.json()), str)


@pytest.mark.parametrize("provider", ["fireworks", "cohere"])
@pytest.mark.parametrize("top_n", [0, -1, True, "2", 1.5])
async def test_bad_top_n_is_422(client: Any, provider: str, top_n: Any) -> None:
    status, answer = await post_json(client, provider, request_body(provider, top_n=top_n))
    assert status == 422
    assert isinstance(ERROR_SHAPES[provider](answer), str)


async def test_deepinfra_rejects_unequal_queries_and_documents(client: Any) -> None:
    status, answer = await post_json(client, "deepinfra", {"queries": [QUERY], "documents": DOCS})
    assert status == 422
    assert "same length" in answer["detail"]["error"]


async def test_cohere_v2_requires_a_model_but_v1_does_not(client: Any) -> None:
    body = {"query": QUERY, "documents": DOCS}
    assert (await client.post("/v2/rerank", json=body)).status == 422
    assert (await client.post("/v1/rerank", json=body)).status == 200


# --- auth and latency ---------------------------------------------------------------------

async def test_api_key_is_required_when_configured(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_emulator_app(EmulatorConfig(api_key="sekret")))
    body = request_body("cohere")
    assert (await client.post("/v2/rerank", json=body)).status == 401
    wrong = await client.post("/v2/rerank", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert isinstance((await wrong.json())["message"], str)
    right = await client.post("/v2/rerank", json=body, headers={"Authorization": "Bearer sekret"})
    assert right.status == 200
    assert (await client.get("/_emulator/stats")).status == 200


async def test_configured_latency_delays_answers(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_emulator_app(EmulatorConfig(latency_ms=150, jitter_ms=50)))
    started = time.perf_counter()
    status, answer = await post_json(client, "deepinfra", request_body("deepinfra"))
    assert status == 200
    assert time.perf_counter() - started >= 0.15
    assert answer["inference_status"]["runtime_ms"] >= 150


# --- faults ---------------------------------------------------------------------------------

async def test_status_fault_with_retry_after(client: Any) -> None:
    await add_fault(client, provider="fireworks", mode="status", status=429, retry_after=2)
    resp = await client.post(PATHS["fireworks"], json=request_body("fireworks"))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "2"
    assert isinstance((await resp.json())["error"], str)


async def test_status_fault_defaults_to_503_without_retry_after(client: Any) -> None:
    await add_fault(client, provider="deepinfra", mode="status")
    resp = await client.post(DEEPINFRA, json=request_body("deepinfra"))
    assert resp.status == 503
    assert "Retry-After" not in resp.headers
    assert isinstance((await resp.json())["detail"]["error"], str)


async def test_hang_fault_never_answers(client: Any) -> None:
    await add_fault(client, provider="tei", mode="hang", count=1)
    with pytest.raises(asyncio.TimeoutError):
        await client.post("/rerank", json=request_body("tei"),
                          timeout=aiohttp.ClientTimeout(total=0.3))
    assert (await client.post("/rerank", json=request_body("tei"))).status == 200


async def test_slow_fault_delays_a_normal_answer(client: Any) -> None:
    await add_fault(client, provider="cohere", mode="slow", delay_ms=200)
    started = time.perf_counter()
    status, answer = await post_json(client, "cohere", request_body("cohere"))
    assert status == 200 and len(answer["results"]) == len(DOCS)
    assert time.perf_counter() - started >= 0.2


async def test_garbage_fault_is_200_without_json(client: Any) -> None:
    await add_fault(client, provider="cohere", mode="garbage")
    resp = await client.post("/v2/rerank", json=request_body("cohere"))
    assert resp.status == 200
    with pytest.raises(ValueError):
        json.loads(await resp.text())


async def test_drop_fault_closes_the_connection(client: Any) -> None:
    await add_fault(client, provider="deepinfra", mode="drop", count=1)
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post(DEEPINFRA, json=request_body("deepinfra"))
    assert (await client.post(DEEPINFRA, json=request_body("deepinfra"))).status == 200


@pytest.mark.parametrize("provider", list(PATHS))
async def test_wrong_count_fault_answers_one_short(client: Any, provider: str) -> None:
    await add_fault(client, provider=provider, mode="wrong_count")
    status, answer = await post_json(client, provider, request_body(provider))
    assert status == 200
    assert len(score_list(answer, provider)) == len(DOCS) - 1


@pytest.mark.parametrize("provider", list(PATHS))
async def test_nan_fault_writes_a_literal_nan(client: Any, provider: str) -> None:
    await add_fault(client, provider=provider, mode="nan")
    resp = await client.post(PATHS[provider], json=request_body(provider))
    text = await resp.text()
    assert resp.status == 200 and "NaN" in text
    scores = score_list(json.loads(text), provider)  # Python's json reads NaN, like lax clients
    assert math.isnan(scores[0]) and len(scores) == len(DOCS)
    assert not any(math.isnan(s) for s in scores[1:])


@pytest.mark.parametrize("provider", ["fireworks", "cohere", "tei"])
async def test_shuffle_fault_keeps_results_but_not_order(client: Any, provider: str) -> None:
    docs = [f"{QUERY} {'filler ' * i}{i}" for i in range(12)]
    await add_fault(client, provider=provider, mode="shuffle")
    _, answer = await post_json(client, provider, request_body(provider, docs))
    scores = score_list(answer, provider)
    assert sorted(indices(answer, provider)) == list(range(12))
    assert scores != sorted(scores, reverse=True)


async def test_shuffle_fault_leaves_deepinfra_untouched(client: Any) -> None:
    await add_fault(client, provider="deepinfra", mode="shuffle")
    _, answer = await post_json(client, "deepinfra", request_body("deepinfra"))
    assert answer["scores"] == [emulated_score(QUERY, d) for d in DOCS]


@pytest.mark.parametrize("provider", ["fireworks", "cohere", "tei"])
async def test_cut_fault_answers_the_top_half(client: Any, provider: str) -> None:
    await add_fault(client, provider=provider, mode="cut")
    extra: dict[str, Any] = {} if provider == "tei" else {"top_n": len(DOCS)}
    _, answer = await post_json(client, provider, request_body(provider, **extra))
    best = sorted(range(len(DOCS)), key=lambda i: emulated_score(QUERY, DOCS[i]), reverse=True)
    assert indices(answer, provider) == best[: len(DOCS) // 2]


@pytest.mark.parametrize("provider", ["fireworks", "cohere", "tei"])
async def test_out_of_range_fault_points_past_the_documents(client: Any, provider: str) -> None:
    await add_fault(client, provider=provider, mode="out_of_range")
    _, answer = await post_json(client, provider, request_body(provider))
    assert len(DOCS) in indices(answer, provider)
    assert len(indices(answer, provider)) == len(DOCS)


@pytest.mark.parametrize("provider", ["fireworks", "cohere", "tei"])
async def test_duplicate_index_fault_repeats_an_index(client: Any, provider: str) -> None:
    await add_fault(client, provider=provider, mode="duplicate_index")
    _, answer = await post_json(client, provider, request_body(provider))
    found = indices(answer, provider)
    assert len(found) == len(DOCS) and len(set(found)) == len(DOCS) - 1


async def test_duplicate_index_fault_with_a_single_result(client: Any) -> None:
    await add_fault(client, provider="cohere", mode="duplicate_index")
    _, answer = await post_json(client, "cohere", request_body("cohere", top_n=1))
    assert len(indices(answer, "cohere")) == 2 and len(set(indices(answer, "cohere"))) == 1


@pytest.mark.parametrize("mode", ["out_of_range", "duplicate_index", "cut"])
async def test_index_faults_shorten_deepinfra(client: Any, mode: str) -> None:
    await add_fault(client, provider="deepinfra", mode=mode)
    _, answer = await post_json(client, "deepinfra", request_body("deepinfra"))
    assert len(answer["scores"]) == (len(DOCS) // 2 if mode == "cut" else len(DOCS) - 1)


async def test_fault_count_applies_to_the_next_n_requests_only(client: Any) -> None:
    await add_fault(client, provider="tei", mode="status", status=500, count=2)
    statuses = [(await client.post("/rerank", json=request_body("tei"))).status for _ in range(3)]
    assert statuses == [500, 500, 200]


async def test_fault_without_count_lasts_until_cleared(client: Any) -> None:
    await add_fault(client, provider="tei", mode="status", count=None)
    for _ in range(3):
        assert (await client.post("/rerank", json=request_body("tei"))).status == 503
    assert (await client.delete("/_emulator/faults")).status == 200
    assert (await client.post("/rerank", json=request_body("tei"))).status == 200


async def test_rules_apply_oldest_first_and_wildcard_hits_every_provider(client: Any) -> None:
    await add_fault(client, provider="*", mode="status", status=502, count=1)
    await add_fault(client, provider="cohere", mode="status", status=504, count=1)
    assert (await client.post("/v2/rerank", json=request_body("cohere"))).status == 502
    assert (await client.post("/v2/rerank", json=request_body("cohere"))).status == 504
    await add_fault(client, provider="*", mode="status", status=500)
    for provider, path in PATHS.items():
        assert (await client.post(path, json=request_body(provider))).status == 500


async def test_faults_only_hit_their_provider(client: Any) -> None:
    await add_fault(client, provider="fireworks", mode="status")
    assert (await client.post(DEEPINFRA, json=request_body("deepinfra"))).status == 200
    assert (await client.post(PATHS["fireworks"], json=request_body("fireworks"))).status == 503


@pytest.mark.parametrize("rule", [
    {"provider": "openai", "mode": "status"}, {"provider": "tei", "mode": "explode"},
    {"provider": "tei", "mode": "status", "status": 200},
    {"provider": "tei", "mode": "status", "count": 0},
    {"provider": "tei", "mode": "slow", "delay_ms": "fast"}, {"mode": "hang"}, [],
])
async def test_bad_fault_rules_are_422(client: Any, rule: Any) -> None:
    resp = await client.post("/_emulator/faults", json=rule)
    assert resp.status == 422
    assert isinstance((await resp.json())["error"], str)


# --- stats, reset, isolation ------------------------------------------------------------------

async def test_stats_count_requests_documents_and_keep_the_last_body(client: Any) -> None:
    await post_json(client, "cohere", request_body("cohere"))
    await post_json(client, "cohere", request_body("cohere", DOCS[:2]))
    await post_json(client, "deepinfra", request_body("deepinfra", DOCS[:3]))
    await add_fault(client, provider="tei", mode="status", count=1)
    await client.post("/rerank", json=request_body("tei", DOCS[:1]))
    stats = await (await client.get("/_emulator/stats")).json()
    assert stats["requests"] == {"deepinfra": 1, "fireworks": 0, "cohere": 2, "tei": 1}
    assert stats["documents"] == {"deepinfra": 3, "fireworks": 0, "cohere": len(DOCS) + 2, "tei": 0}
    # The tokens its answers billed: the deepinfra answer's input_tokens, for one.
    deepinfra = (await post_json(client, "deepinfra", request_body("deepinfra", DOCS[:3])))[1]
    stats_after = await (await client.get("/_emulator/stats")).json()
    assert stats_after["tokens"]["deepinfra"] == 2 * deepinfra["input_tokens"] > 0
    assert stats_after["tokens"]["fireworks"] == stats_after["tokens"]["tei"] == 0 < stats_after["tokens"]["cohere"]
    assert stats["last_body"] == {
        "deepinfra": request_body("deepinfra", DOCS[:3]), "fireworks": None,
        "cohere": request_body("cohere", DOCS[:2]), "tei": request_body("tei", DOCS[:1]),
    }


async def test_reset_clears_stats_and_faults(client: Any) -> None:
    await add_fault(client, provider="*", mode="status")
    await client.post("/v2/rerank", json=request_body("cohere"))
    assert (await client.post("/_emulator/reset")).status == 200
    stats = await (await client.get("/_emulator/stats")).json()
    assert set(stats["requests"].values()) == {0} and set(stats["documents"].values()) == {0}
    assert set(stats["last_body"].values()) == {None}
    assert (await client.post("/v2/rerank", json=request_body("cohere"))).status == 200


async def test_apps_do_not_share_state(aiohttp_client: Any) -> None:
    first = await aiohttp_client(create_emulator_app())
    second = await aiohttp_client(create_emulator_app())
    await add_fault(first, provider="*", mode="status")
    assert (await second.post("/rerank", json=request_body("tei"))).status == 200
    assert (await first.post("/rerank", json=request_body("tei"))).status == 503
    assert (await (await second.get("/_emulator/stats")).json())["requests"]["tei"] == 1


# aiohttp warns about any raw body over 1 MiB (it suggests a stream); this one is that large on purpose.
@pytest.mark.filterwarnings("ignore:Sending a large body directly with raw bytes:ResourceWarning")
async def test_takes_bodies_as_large_as_the_gateway_sends(client: Any) -> None:
    # The gateway's default server.max_body_bytes is 32 MiB; aiohttp's own default would refuse
    # anything over 1 MiB with 413 and fail a large request through the gateway.
    documents = ["x" * 8000] * 1000  # 8 MB of passages
    status, body = await post_json(client, "deepinfra", {"queries": [QUERY] * 1000, "documents": documents})
    assert status == 200
    assert len(body["scores"]) == 1000


# --- fault modes, documented where a new user looks --------------------------------------------

def test_every_fault_mode_is_in_emulate_help_and_has_a_curl_in_the_readme():
    from pathlib import Path

    from click.testing import CliRunner

    from gateway.cli import main
    from gateway.emulator import FAULT_MODE_HELP, FAULT_MODES

    shown = CliRunner().invoke(main, ["emulate", "--help"])
    assert shown.exit_code == 0, shown.output
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for mode in FAULT_MODES:
        assert f"  {mode} " in shown.output and FAULT_MODE_HELP[mode] in " ".join(shown.output.split()), mode
        assert re.search(rf"""^curl -s \$F -d '\{{"provider": "[a-z*]+", "mode": "{mode}"[,}}]""", readme, re.M), mode
