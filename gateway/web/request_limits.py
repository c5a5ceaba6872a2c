"""The configured size limits on a decoded request, checked before any provider is called."""

from __future__ import annotations

from gateway.config import ServerConfig
from gateway.errors import PayloadTooLarge
from gateway.models import RerankRequest


def check_limits(request: RerankRequest, limits: ServerConfig) -> None:
    count = len(request.documents)
    if count > limits.max_documents:
        raise PayloadTooLarge(f"documents: {count} documents exceed server.max_documents = {limits.max_documents}")
    longest_chars = max(map(len, request.documents))
    if longest_chars > limits.max_document_chars:
        longest = next(i for i, document in enumerate(request.documents) if len(document) == longest_chars)
        raise PayloadTooLarge(
            f"documents[{longest}]: {longest_chars} characters exceed "
            f"server.max_document_chars = {limits.max_document_chars}"
        )
    distinct_queries = set(request.queries)
    if len(distinct_queries) > limits.max_queries:
        raise PayloadTooLarge(f"queries: {len(distinct_queries)} queries exceed server.max_queries = {limits.max_queries}")
    longest_query = max(map(len, distinct_queries))
    if longest_query > limits.max_query_chars:
        raise PayloadTooLarge(
            f"query: {longest_query} characters exceed server.max_query_chars = {limits.max_query_chars}"
        )
    if request.instruction is not None and len(request.instruction) > limits.max_instruction_chars:
        raise PayloadTooLarge(
            f"instruction: {len(request.instruction)} characters exceed "
            f"server.max_instruction_chars = {limits.max_instruction_chars}"
        )
