"""Hugging Face text-embeddings-inference `/rerank`: one query, answers a bare list."""

from __future__ import annotations

from typing import Any

from gateway.config import ProviderConfig
from gateway.providers.base import Batch, InvalidAnswer, WireScores, scores_by_index


class TeiAdapter:
    multi_query = False
    takes_instruction = False

    def default_path(self, config: ProviderConfig) -> str:
        return "/rerank"

    def to_wire(self, batch: Batch, config: ProviderConfig) -> dict[str, Any]:
        return {
            "query": batch.queries[0],
            "texts": list(batch.documents),
            # With a sigmoid transform configured, take the logits and apply it ourselves.
            "raw_scores": config.score_transform == "sigmoid",
            "return_text": False,
            "truncate": True,
        }

    def from_wire(self, payload: Any, count: int) -> WireScores:
        if not isinstance(payload, list):
            raise InvalidAnswer("the answer is not a list")
        return WireScores(scores=scores_by_index(payload, count, "score"))

    def billed_chars(self, batch: Batch) -> int:
        # TEI tokenizes each text together with the query: the query counts once per text.
        # Its answers carry no usage at all, so this count is what a TEI provider is billed.
        return sum(len(query) + len(text) for query, text in zip(batch.queries, batch.documents))
