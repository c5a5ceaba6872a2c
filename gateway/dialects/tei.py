"""text-embeddings-inference's `/rerank`: `texts` in, a bare list sorted by score out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from gateway.dialects.fields import expect_object, optional_bool, optional_string, required_string, string_list
from gateway.errors import InvalidRequest
from gateway.models import RerankRequest, RerankResult

# Keeps logit() finite for scores of exactly 0 or 1.
_EPSILON = 1e-12


class TeiDialect:
    name = "tei"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        body = expect_object(payload)
        texts = string_list(body, "texts")
        return RerankRequest(
            queries=(required_string(body, "query"),) * len(texts),
            documents=texts,
            return_documents=optional_bool(body, "return_text"),
            raw_scores=optional_bool(body, "raw_scores"),
            long_documents=_long_documents(body),
            truncate_from=_truncation_direction(body),
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


def _long_documents(body: dict[str, Any]) -> Literal["truncate", "refuse"] | None:
    """TEI's `truncate`: true cuts a text over the model's limit, false refuses it (as TEI does);
    absent, the model's own long_documents applies."""
    if body.get("truncate") is None:
        return None
    return "truncate" if optional_bool(body, "truncate") else "refuse"


def _truncation_direction(body: dict[str, Any]) -> Literal["left", "right"]:
    """TEI's `truncation_direction`: "Right" (its default) keeps a text's start, "Left" its end."""
    direction = optional_string(body, "truncation_direction")
    if direction is None or direction.lower() == "right":
        return "right"
    if direction.lower() == "left":
        return "left"
    raise InvalidRequest(f"truncation_direction: expected \"Left\" or \"Right\", got {direction[:40]!r}")


def logit(probability: float) -> float:
    """A score in (0, 1) as the logit a model's raw output would be; shared with Infinity's raw_scores."""
    clamped = min(max(probability, _EPSILON), 1 - _EPSILON)
    return math.log(clamped / (1 - clamped))
