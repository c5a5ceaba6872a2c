"""Cohere's rerank format (v1 and v2), spoken by most client libraries and servers.

Documents are strings or objects. An object is ranked by its `text`, or, with `rank_fields`, by
those fields in that order (one `field: value` line each; a single field ranks by its bare
value, as `text` alone does; missing fields are left out). With `return_documents` an object comes back whole, every field
kept, as Cohere documents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.dialects.fields import expect_object, optional_string_list, optional_top_n
from gateway.dialects.ranked import decode_one_query, ranked_results
from gateway.errors import InvalidRequest
from gateway.models import RerankRequest, RerankResult

# Cohere bills one search unit per query with up to 100 documents.
_DOCUMENTS_PER_SEARCH_UNIT = 100
# orjson writes at most 254 nested objects and arrays; an answer puts a returned document 3 deep.
MAX_RETURNED_NESTING = 250


class CohereDialect:
    def __init__(self, api_version: str) -> None:
        self.api_version = api_version
        self.name = f"cohere-v{api_version}"

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest:
        body = expect_object(payload)
        rank_fields = optional_string_list(body, "rank_fields")
        sent = body.get("documents")
        if rank_fields is None or not isinstance(sent, list):
            request = decode_one_query(body)  # strings or {"text"}; its errors name the field
        else:
            request = decode_one_query(body, documents=ranked_texts(sent, rank_fields))
        if isinstance(sent, list) and any(isinstance(document, dict) for document in sent):
            if request.return_documents:
                _refuse_unwritable(sent)
            request = dataclasses.replace(request, sent_documents=tuple(sent))
        if self.api_version == "2":
            # v2's cut per document, which Cohere applies by truncating (gateway.scoring.shaping).
            max_tokens = optional_top_n(body, "max_tokens_per_doc")
            if max_tokens is not None:
                request = dataclasses.replace(request, max_tokens_per_document=max_tokens)
        return request

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any:
        results = ranked_results(request, result, lambda index: returned_document(request, index))
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


def _refuse_unwritable(documents: list[Any]) -> None:
    """Refuse, before any provider is paid, a document the answer could not carry back (orjson's depth limit)."""
    for index, document in enumerate(documents):
        if _nesting(document) > MAX_RETURNED_NESTING:
            raise InvalidRequest(
                f"documents[{index}]: nested deeper than {MAX_RETURNED_NESTING} levels, "
                "too deep to return with return_documents"
            )


def _nesting(value: Any) -> int:
    """How many objects and arrays deep `value` goes; a loop, not recursion, whatever the depth."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def returned_document(request: RerankRequest, index: int) -> Any:
    """What Cohere answers as `document`: the object as sent, or `{"text"}` for a string."""
    if request.sent_documents is not None and isinstance(request.sent_documents[index], dict):
        return request.sent_documents[index]
    return {"text": request.documents[index]}


def ranked_texts(documents: list[Any], rank_fields: Sequence[str]) -> tuple[str, ...]:
    """The text each document is scored on, from its rank_fields in order."""
    if not documents:
        raise InvalidRequest("documents: must not be empty")
    return tuple(_ranked_text(document, index, rank_fields) for index, document in enumerate(documents))


def _ranked_text(document: Any, index: int, rank_fields: Sequence[str]) -> str:
    if isinstance(document, str):
        return document
    if not isinstance(document, dict):
        raise InvalidRequest(f"documents[{index}]: expected a string or an object")
    present = [(field, _field_text(document[field])) for field in rank_fields if field in document]
    if len(rank_fields) == 1:
        # A document without the field ranks as an empty text, as an empty string document does.
        return present[0][1] if present else ""
    return "\n".join(f"{field}: {text}" for field, text in present)


def _field_text(value: Any) -> str:
    # Strings as they are; numbers, booleans, lists and objects as compact JSON.
    return value if isinstance(value, str) else orjson.dumps(value).decode()
