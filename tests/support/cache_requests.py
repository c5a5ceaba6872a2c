"""Requests whose passages are tagged, and the scores the emulator gives them."""

from __future__ import annotations

from gateway.emulator import emulated_score

DI = "/v1/inference/Qwen/Qwen3-Reranker-8B"
QUERY = "what does out-of-court bankruptcy cost?"


def documents(tag: str, count: int = 20) -> list[str]:
    return [f"passage {tag}-{i}: bankruptcy through the MFC costs {i} rubles" for i in range(count)]


def expected(docs: list[str], query: str = QUERY) -> list[float]:
    return [emulated_score(query, d) for d in docs]
