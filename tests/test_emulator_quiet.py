"""The emulator's quiet faults: answers that are well-formed and in range, but from the wrong model."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.emulator import EmulatorConfig, create_emulator_app, emulated_score, misbehaving_score
from tests.support.emulator_calls import (
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

QUIET_MODES = ("rescale", "template", "random")
# Twelve passages sharing 0-5 words with the query: enough pairs for an order to be wrong.
QUERY_WORDS = ["bankruptcy", "mfc", "cost", "free", "procedure"]
GRADED = [" ".join(QUERY_WORDS[: i % 6]) + f" filler{i}" for i in range(12)]
GRADED_QUERY = " ".join(QUERY_WORDS)


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_emulator_app(EmulatorConfig(seed=7)))


def in_input_order(answer: Any, provider: str, count: int) -> list[float]:
    if provider == "deepinfra":
        return answer["scores"]
    scores = [math.nan] * count
    for index, score in zip(indices(answer, provider), score_list(answer, provider)):
        scores[index] = score
    return scores


def ranking(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)


@pytest.mark.parametrize("mode", QUIET_MODES)
@pytest.mark.parametrize(("path", "sample"), [
    ("/v1/inference/Qwen/Qwen3-Reranker-8B", "deepinfra"), ("/inference/v1/rerank", "fireworks"),
    ("/v2/rerank", "cohere-v2"), ("/rerank", "tei"),
])
async def test_quiet_faults_keep_the_golden_shape(client: Any, mode: str, path: str,
                                                  sample: str) -> None:
    await add_fault(client, provider="*", mode=mode)
    resp = await client.post(path, json=golden(f"{sample}.request.json"))
    assert resp.status == 200
    assert shape(await resp.json()) == shape(golden(f"{sample}.response.json"))


@pytest.mark.parametrize("mode", QUIET_MODES)
@pytest.mark.parametrize("provider", list(PATHS))
async def test_quiet_faults_answer_every_document_in_range(client: Any, mode: str,
                                                           provider: str) -> None:
    await add_fault(client, provider=provider, mode=mode)
    status, answer = await post_json(client, provider, request_body(provider))
    assert status == 200
    scores = in_input_order(answer, provider, len(DOCS))
    assert all(0.0 < score < 1.0 for score in scores)
    assert scores == [misbehaving_score(mode, QUERY, d, seed=7) for d in DOCS]
    assert scores != [emulated_score(QUERY, d) for d in DOCS]


@pytest.mark.parametrize("provider", list(PATHS))
async def test_rescale_keeps_the_order_but_not_the_values(client: Any, provider: str) -> None:
    honest = [emulated_score(GRADED_QUERY, d) for d in GRADED]
    await add_fault(client, provider=provider, mode="rescale")
    body = {**request_body(provider, GRADED), **({"queries": [GRADED_QUERY] * len(GRADED)}
            if provider == "deepinfra" else {"query": GRADED_QUERY})}
    _, answer = await post_json(client, provider, body)
    scores = in_input_order(answer, provider, len(GRADED))
    assert ranking(scores) == ranking(honest)
    assert max(abs(a - b) for a, b in zip(scores, honest)) > 0.2


async def test_template_reorders_pairs_and_ignores_the_instruction(client: Any) -> None:
    honest = [emulated_score(GRADED_QUERY, d, INSTRUCTION) for d in GRADED]
    await add_fault(client, provider="deepinfra", mode="template")
    body = {"queries": [GRADED_QUERY] * len(GRADED), "documents": GRADED, "instruction": INSTRUCTION}
    _, answer = await post_json(client, "deepinfra", body)
    assert ranking(answer["scores"]) != ranking(honest)
    without = [misbehaving_score("template", GRADED_QUERY, d) for d in GRADED]
    assert answer["scores"] == without


async def test_random_is_fixed_per_pair_and_seed_and_blind_to_relevance(client: Any) -> None:
    await add_fault(client, provider="tei", mode="random", count=2)
    first = (await post_json(client, "tei", request_body("tei", GRADED)))[1]
    second = (await post_json(client, "tei", request_body("tei", GRADED)))[1]
    assert first == second  # repeatable, like a wrong model rather than a flaky one
    honest = [emulated_score(QUERY, d) for d in GRADED]
    assert ranking(in_input_order(first, "tei", len(GRADED))) != ranking(honest)
    assert {misbehaving_score("random", QUERY, d, seed=8) for d in GRADED}.isdisjoint(
        score_list(first, "tei"))


async def test_tei_raw_scores_are_the_logits_of_the_quiet_scores(client: Any) -> None:
    await add_fault(client, provider="tei", mode="rescale")
    _, answer = await post_json(client, "tei", request_body("tei", raw_scores=True))
    logits = in_input_order(answer, "tei", len(DOCS))
    expected = [misbehaving_score("rescale", QUERY, d) for d in DOCS]
    assert [1 / (1 + math.exp(-x)) for x in logits] == pytest.approx(expected, abs=1e-12)
    assert min(logits) < 0  # logits, not probabilities


async def test_quiet_fault_count_and_clear_work_like_any_fault(client: Any) -> None:
    await add_fault(client, provider="fireworks", mode="random", count=1)
    _, faulty = await post_json(client, "fireworks", request_body("fireworks"))
    _, honest = await post_json(client, "fireworks", request_body("fireworks"))
    assert in_input_order(honest, "fireworks", len(DOCS)) == [emulated_score(QUERY, d) for d in DOCS]
    assert in_input_order(faulty, "fireworks", len(DOCS)) != in_input_order(honest, "fireworks", len(DOCS))


def test_misbehaving_score_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="not a quiet fault mode: 'honest'"):
        misbehaving_score("honest", QUERY, DOCS[0])
