"""Fireworks' rerank format: Cohere-like, with `task` for the instruction and `data` sorted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.dialects.ranked import decode_one_query, ranked_results
from gateway.models import RerankRequest, RerankResult


class FireworksDialect:
    name = "fireworks"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        return decode_one_query(payload, instruction_key="task")

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any:
        data = ranked_results(request, result, request.documents.__getitem__)
        tokens = result.usage.tokens
        answer: dict[str, Any] = {
            "object": "list",
            "model": request.model or result.model,
            "data": data,
            # Clients that auto-detect the answer format look for `scores` or `results`.
            "results": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        if result.degraded:
            answer["degraded"] = True  # lexical last resort: an order, not model scores
        return answer
