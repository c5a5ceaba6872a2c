"""Fireworks' rerank format: Cohere-like, with `task` for the instruction and `data` sorted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.dialects.fields import expect_object, optional_bool, optional_string, optional_top_n, required_string, string_list
from gateway.models import RerankRequest, RerankResult


class FireworksDialect:
    name = "fireworks"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        body = expect_object(payload)
        documents = string_list(body, "documents", text_objects=True)
        return RerankRequest(
            queries=(required_string(body, "query"),) * len(documents),
            documents=documents,
            model=optional_string(body, "model"),
            instruction=optional_string(body, "task"),
            top_n=optional_top_n(body),
            return_documents=optional_bool(body, "return_documents"),
        )

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any:
        data = []
        for index in result.ranking(request.top_n):
            item: dict[str, Any] = {"index": index, "relevance_score": result.scores[index]}
            if request.return_documents:
                item["document"] = request.documents[index]
            data.append(item)
        tokens = result.usage.tokens
        answer = {
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
