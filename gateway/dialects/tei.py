"""text-embeddings-inference's `/rerank`: `texts` in, a bare list sorted by score out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.dialects.fields import expect_object, optional_bool, required_string, string_list
from gateway.models import RerankRequest, RerankResult

# Keeps logit() finite for scores of exactly 0 or 1.
_EPSILON = 1e-12


class TeiDialect:
    name = "tei"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        body = expect_object(payload)
        texts = string_list(body, "texts")
        # `truncate` and `truncation_direction` are accepted and left to the provider.
        return RerankRequest(
            queries=(required_string(body, "query"),) * len(texts),
            documents=texts,
            return_documents=optional_bool(body, "return_text"),
            raw_scores=optional_bool(body, "raw_scores"),
        )

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any:
        answer = []
        for index in result.ranking(None):
            score = result.scores[index]
            item: dict[str, Any] = {"index": index, "score": logit(score) if request.raw_scores else score}
            if request.return_documents:
                item["text"] = request.documents[index]
            answer.append(item)
        return answer


def logit(probability: float) -> float:
    """A score in (0, 1) as the logit a model's raw output would be; shared with Infinity's raw_scores."""
    clamped = min(max(probability, _EPSILON), 1 - _EPSILON)
    return math.log(clamped / (1 - clamped))
