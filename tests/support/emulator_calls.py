"""Requests to the emulator in each provider's format, and what to read of its answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parents[1] / "golden"
QUERY = "how much does bankruptcy through the MFC cost?"
DOCS = [
    "The MFC in Kazan opens at 8:00.",
    "Out-of-court bankruptcy through the MFC is free.",
    "Weather in Kazan is cold in winter.",
    "Bankruptcy cost: the MFC procedure does not cost anything.",
    "A recipe for pancakes.",
]
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEEPINFRA = "/v1/inference/Qwen/Qwen3-Reranker-8B"
PATHS = {"deepinfra": DEEPINFRA, "fireworks": "/inference/v1/rerank", "cohere": "/v2/rerank",
         "tei": "/rerank"}


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def request_body(provider: str, docs: list[str] = DOCS, **extra: Any) -> dict[str, Any]:
    if provider == "deepinfra":
        return {"queries": [QUERY] * len(docs), "documents": docs, **extra}
    if provider == "tei":
        return {"query": QUERY, "texts": docs, **extra}
    return {"model": "m", "query": QUERY, "documents": docs, **extra}


def shape(value: Any) -> Any:
    """Keys and nesting of a JSON value, with leaves reduced to their JSON kind."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    if isinstance(value, bool) or value is None:
        return value if value is None else "bool"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def results(answer: Any, provider: str) -> list[dict[str, Any]]:
    return answer if provider == "tei" else answer["data" if provider == "fireworks" else "results"]


def indices(answer: Any, provider: str) -> list[int]:
    return [item["index"] for item in results(answer, provider)]


def score_list(answer: Any, provider: str) -> list[float]:
    if provider == "deepinfra":
        return answer["scores"]
    key = "score" if provider == "tei" else "relevance_score"
    return [item[key] for item in results(answer, provider)]


async def add_fault(client: Any, **rule: Any) -> None:
    resp = await client.post("/_emulator/faults", json=rule)
    assert resp.status == 200, await resp.text()


async def post_json(client: Any, provider: str, body: Any) -> tuple[int, Any]:
    resp = await client.post(PATHS[provider], json=body)
    return resp.status, json.loads(await resp.text())
