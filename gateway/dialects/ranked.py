"""What the Cohere-like formats (Cohere, Fireworks) share: one query in, a ranked list out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.dialects.fields import (
    expect_object,
    optional_bool,
    optional_model,
    optional_string,
    optional_top_n,
    required_string,
    string_list,
)
from gateway.models import RerankRequest, RerankResult


def decode_one_query(
    payload: Any, instruction_key: str | None = None, documents: tuple[str, ...] | None = None
) -> RerankRequest:
    """`query`, `documents` (strings or {"text"}, unless the dialect read them), `model`, `top_n`, `return_documents`."""
    body = expect_object(payload)
    if documents is None:
        documents = string_list(body, "documents", text_objects=True)
    return RerankRequest(
        queries=(required_string(body, "query"),) * len(documents),
        documents=documents,
        model=optional_model(body),
        instruction=optional_string(body, instruction_key) if instruction_key else None,
        top_n=optional_top_n(body),
        return_documents=optional_bool(body, "return_documents"),
    )


def ranked_results(request: RerankRequest, result: RerankResult, document: Callable[[int], Any]) -> list[dict[str, Any]]:
    """`[{"index", "relevance_score", "document"?}]`, best first, cut to top_n; `document(index)` renders one."""
    items = []
    for index in result.ranking(request.top_n):
        item: dict[str, Any] = {"index": index, "relevance_score": result.scores[index]}
        if request.return_documents:
            item["document"] = document(index)
        items.append(item)
    return items
