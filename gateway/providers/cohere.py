"""Any Cohere-compatible rerank API: Cohere, Jina, vLLM, Infinity, SiliconFlow."""

from __future__ import annotations

from typing import Any

from gateway.config import ProviderConfig
from gateway.providers.base import Batch, InvalidAnswer, WireScores, dig, first_count, pair_chars, scores_by_index


class CohereAdapter:
    multi_query = False
    # Cohere's API has no instruction field; sending one would be silently dropped.
    takes_instruction = False

    def default_path(self, config: ProviderConfig) -> str:
        return "/v1/rerank"

    def to_wire(self, batch: Batch, config: ProviderConfig) -> dict[str, Any]:
        return {
            "model": config.model,
            "query": batch.queries[0],
            "documents": list(batch.documents),
            "top_n": len(batch.documents),
            "return_documents": False,
        }

    def from_wire(self, payload: Any, count: int) -> WireScores:
        items = dig(payload, "results")
        if items is None:
            raise InvalidAnswer("no 'results' list in the answer")
        return WireScores(
            scores=scores_by_index(items, count, "relevance_score"),
            # Cohere reports meta.tokens or meta.billed_units; Jina and vLLM an OpenAI-like usage.
            tokens=first_count(
                payload,
                ("meta", "tokens", "input_tokens"),
                ("meta", "billed_units", "input_tokens"),
                ("usage", "total_tokens"),
                ("usage", "prompt_tokens"),
                ("tokens", "input_tokens"),
            ),
        )

    def billed_chars(self, batch: Batch) -> int:
        return pair_chars(batch)
