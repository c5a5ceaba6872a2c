"""Fireworks' rerank API: Cohere-like, one query per call, `task` carries the instruction."""

from __future__ import annotations

from typing import Any

from gateway.config import ProviderConfig
from gateway.providers.base import Batch, InvalidAnswer, WireScores, dig, first_count, pair_chars, scores_by_index


class FireworksAdapter:
    multi_query = False
    takes_instruction = True

    def default_path(self, config: ProviderConfig) -> str:
        return "/inference/v1/rerank"

    def to_wire(self, batch: Batch, config: ProviderConfig) -> dict[str, Any]:
        # top_n = every document: the gateway ranks and cuts itself so every score can be cached.
        body: dict[str, Any] = {
            "model": config.model,
            "query": batch.queries[0],
            "documents": list(batch.documents),
            "top_n": len(batch.documents),
            "return_documents": False,
        }
        if batch.instruction is not None:
            body["task"] = batch.instruction
        return body

    def from_wire(self, payload: Any, count: int) -> WireScores:
        items = dig(payload, "data")
        if items is None:
            items = dig(payload, "results")
        if items is None:
            raise InvalidAnswer("no 'data' list in the answer")
        return WireScores(
            scores=scores_by_index(items, count, "relevance_score"),
            tokens=first_count(payload, ("usage", "total_tokens"), ("usage", "prompt_tokens")),
        )

    def billed_chars(self, batch: Batch) -> int:
        return pair_chars(batch)
