"""Cohere's rerank format (v1 and v2), spoken by most client libraries and servers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.dialects.ranked import decode_one_query, ranked_results
from gateway.models import RerankRequest, RerankResult

# Cohere bills one search unit per query with up to 100 documents.
_DOCUMENTS_PER_SEARCH_UNIT = 100


class CohereDialect:
    def __init__(self, api_version: str) -> None:
        self.api_version = api_version
        self.name = f"cohere-v{api_version}"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        return decode_one_query(payload)

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any:
        results = ranked_results(request, result, lambda text: {"text": text})
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
