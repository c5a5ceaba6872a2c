"""Cohere's rerank format (v1 and v2), spoken by most client libraries and servers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.dialects.fields import expect_object, optional_bool, optional_string, optional_top_n, required_string, string_list
from gateway.models import RerankRequest, RerankResult

# Cohere bills one search unit per query with up to 100 documents.
_DOCUMENTS_PER_SEARCH_UNIT = 100


class CohereDialect:
    def __init__(self, api_version: str) -> None:
        self.api_version = api_version
        self.name = f"cohere-v{api_version}"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        body = expect_object(payload)
        documents = string_list(body, "documents", text_objects=True)
        return RerankRequest(
            queries=(required_string(body, "query"),) * len(documents),
            documents=documents,
            model=optional_string(body, "model"),
            top_n=optional_top_n(body),
            return_documents=optional_bool(body, "return_documents"),
        )

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any:
        results = []
        for index in result.ranking(request.top_n):
            item: dict[str, Any] = {"index": index, "relevance_score": result.scores[index]}
            if request.return_documents:
                item["document"] = {"text": request.documents[index]}
            results.append(item)
        search_units = -(-len(request.documents) // _DOCUMENTS_PER_SEARCH_UNIT)
        meta: dict[str, Any] = {
            "api_version": {"version": self.api_version},
            "billed_units": {"search_units": search_units},
            "tokens": {"input_tokens": result.usage.tokens, "output_tokens": 0},
        }
        if result.degraded:
            # Cohere's meta.warnings is where its SDKs surface such notes.
            meta["warnings"] = ["degraded-lexical: every provider failed; scores are BM25, not model relevance"]
        return {"id": request_id, "results": results, "meta": meta}
