"""DeepInfra's inference API: scores (query, document) pairs, so many queries fit one call."""

from __future__ import annotations

import math
from typing import Any

from gateway.config import ProviderConfig
from gateway.providers.base import Batch, InvalidAnswer, WireScores, as_scores, dig, first_count, pair_chars


class DeepInfraAdapter:
    multi_query = True
    takes_instruction = True

    def default_path(self, config: ProviderConfig) -> str:
        return f"/v1/inference/{config.model}"

    def to_wire(self, batch: Batch, config: ProviderConfig) -> dict[str, Any]:
        body: dict[str, Any] = {"queries": list(batch.queries), "documents": list(batch.documents)}
        if batch.instruction is not None:
            body["instruction"] = batch.instruction
        return body

    def from_wire(self, payload: Any, count: int) -> WireScores:
        scores = dig(payload, "scores")
        if not isinstance(scores, list):
            raise InvalidAnswer("no 'scores' list in the answer")
        if len(scores) != count:
            raise InvalidAnswer(f"{len(scores)} scores for {count} documents")
        cost = dig(payload, "inference_status", "cost")
        reported_cost = float(cost) if isinstance(cost, (int, float)) and math.isfinite(cost) and cost >= 0 else None
        return WireScores(
            scores=as_scores(scores),
            tokens=first_count(payload, ("input_tokens",), ("inference_status", "tokens_input")),
            cost_usd=reported_cost,
        )

    def billed_chars(self, batch: Batch) -> int:
        return pair_chars(batch)
