"""DeepInfra's inference format: `queries` x `documents` (or `passages`) -> `scores` in order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.dialects.fields import expect_object, optional_string, string_list
from gateway.errors import InvalidRequest
from gateway.models import RerankRequest, RerankResult


class DeepInfraDialect:
    name = "deepinfra"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        body = expect_object(payload)
        if "documents" in body and "passages" in body:
            raise InvalidRequest("send either documents or passages, not both")
        # The knowledge-base server's older client says `passages` for `documents`.
        documents = string_list(body, "passages" if "passages" in body else "documents")
        queries = string_list(body, "queries")
        if len(queries) == 1:
            queries = queries * len(documents)
        elif len(queries) != len(documents):
            raise InvalidRequest(
                f"queries: {len(queries)} queries for {len(documents)} documents; "
                "send one query for all documents or one per document"
            )
        return RerankRequest(
            queries=queries,
            documents=documents,
            model=path_params["model"],
            instruction=optional_string(body, "instruction"),
        )

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any:
        tokens = result.usage.tokens
        answer = {
            "scores": result.scores,
            "input_tokens": tokens,
            "request_id": request_id,
            "inference_status": {
                "status": "succeeded",
                "runtime_ms": round(result.runtime_ms),
                "cost": result.usage.cost_usd,
                "tokens_generated": 0,
                "tokens_input": tokens,
                "output_length": 0,
            },
        }
        if result.degraded:
            answer["degraded"] = True  # lexical last resort: an order, not model scores
        return answer
