"""Infinity's `/rerank` (michaelfeil/infinity): Cohere's request, `document` answered as a bare string.

Infinity and vLLM both serve `/rerank` and their clients send the same bytes (LiteLLM's
`infinity/` and `hosted_vllm/` routes send identical bodies and headers), but they parse the
answer differently: vLLM's expects `document: {"text": ...}` (what the gateway's `/rerank`
gives), Infinity's a string, and neither takes the other's (LiteLLM's Infinity parser wraps the
value as `{"text": value}`, its vLLM parser calls `.get("text")` on it). No request tells them
apart, so Infinity's clients get their own base URL, `<gateway>/infinity`, under which the path is
the one Infinity serves. tests/test_client_ecosystem.py checks all of this against real LiteLLM.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from gateway.dialects.fields import expect_object, optional_bool
from gateway.dialects.ranked import decode_one_query, ranked_results
from gateway.dialects.tei import logit
from gateway.models import RerankRequest, RerankResult


class InfinityDialect:
    name = "infinity"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        request = decode_one_query(payload)
        # Infinity's raw_scores: the model's logits rather than probabilities, as TEI's.
        return dataclasses.replace(request, raw_scores=optional_bool(expect_object(payload), "raw_scores"))

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any:
        results = ranked_results(request, result, request.documents.__getitem__)
        if request.raw_scores:
            for item in results:
                item["relevance_score"] = logit(item["relevance_score"])
        tokens = result.usage.tokens
        answer: dict[str, Any] = {
            "object": "rerank",
            "results": results,
            "model": request.model or result.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "id": request_id,
            "created": int(time.time()),
        }
        if result.degraded:
            answer["degraded"] = True  # lexical last resort: an order, not model scores
        return answer

