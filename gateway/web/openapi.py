"""openapi_spec(): the OpenAPI 3.1 description of every endpoint the gateway serves.

Response shapes follow the dialect encoders in gateway/dialects/ and the handlers in http.py and
admin.py; tests/test_openapi.py validates real requests and answers against this document, so a
change to a wire shape that is not made here too fails a test. Request schemas describe what
the decoders accept: unknown fields are ignored (clients send provider-specific extras), and an
optional field sent as null counts as absent.
"""

from __future__ import annotations

from typing import Any

from gateway.observability.metrics import BREAKER_STATE_VALUES, PROVIDER_STATES

Schema = dict[str, Any]

_ERROR_TYPES = (
    "bad_request (400), unauthorized (401), model_not_allowed (403), not_found / model_not_found (404), "
    "method_not_allowed (405), payload_too_large (413), invalid_request / invalid_config (422), "
    "budget_exhausted / rate_limited (429), internal_error (500), "
    "all_providers_failed / upstream_rejected (502), providers_unavailable (503), "
    "upstream_timeout / deadline_exceeded (504)"
)


def openapi_spec() -> dict[str, Any]:
    """A fresh copy of the spec; callers may change it."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rerank-gateway",
            "version": "0.1.0",
            "description": (
                "A rerank gateway that speaks DeepInfra, Fireworks, Cohere (v1/v2) and TEI wire formats, "
                "sends each request to the first usable provider in the configured fallback order, caches "
                "every (query, passage) score and answers in the format the client spoke.\n\n"
                "Every answer carries `X-Request-ID`. Every 4xx/5xx answer has the body "
                "`{\"error\": {\"type\", \"message\", \"request_id\"}}` and `X-Rerank-Provider: none`; "
                f"error types: {_ERROR_TYPES}. A path served with another method answers 405 "
                "`method_not_allowed`, an unknown path 404 `not_found`."
            ),
        },
        "tags": [
            {"name": "rerank", "description": "One endpoint per client wire format."},
            {"name": "ops", "description": "Health, readiness, metrics, the status page and this document."},
            {"name": "admin", "description": "Off unless [server] admin_key_env names a set env var (404 otherwise)."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "parameters": _parameters(),
            "headers": _headers(),
            "responses": _error_responses(),
            "securitySchemes": {
                "clientKey": {
                    "type": "http", "scheme": "bearer",
                    "description": "A client's key: one of [clients.NAME] key_env's, or of the env var [server] "
                                   "api_keys_env names (comma-separated); required when either is set.",
                },
                "adminKey": {
                    "type": "http", "scheme": "bearer",
                    "description": "The key in the env var [server] admin_key_env names.",
                },
            },
        },
    }


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Schema:
    return _ref("schemas", name)


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


# --- paths ----------------------------------------------------------------------------------------


def _paths() -> dict[str, Any]:
    cohere_or_tei_request = {"oneOf": [
        _schema("TeiRequest"),
        # A body with `texts` is TEI's whatever else it holds.
        {"allOf": [_schema("CohereRequest"), {"not": {"required": ["texts"]}}]},
    ]}
    return {
        "/v1/inference/{model}": {"post": _rerank_operation(
            "deepinfra", "DeepInfra inference format",
            "`queries` x `documents` (or `passages`) -> `scores` in request order. The model is in the path "
            "and may contain `/` (e.g. `Qwen/Qwen3-Reranker-8B`), sent unescaped. Send one query for all "
            "documents or one per document.",
            _schema("DeepInfraRequest"), _schema("DeepInfraResponse"),
            parameters=[_MODEL_IN_PATH],
        )},
        "/inference/{model}": {"post": _rerank_operation(
            "deepinfra-root", "DeepInfra inference format (root base URL)",
            "The same as `/v1/inference/{model}`, at the path DeepInfra's root base URL gives "
            "(LiteLLM's `deepinfra/` route with the gateway root as `api_base`).",
            _schema("DeepInfraRequest"), _schema("DeepInfraResponse"),
            parameters=[_MODEL_IN_PATH],
        )},
        "/inference/v1/rerank": {"post": _rerank_operation(
            "fireworks", "Fireworks rerank format",
            "`task` is the instruction. The answer lists `data` best first, cut to `top_n`, and the same list "
            "as `results` for clients that auto-detect the format.",
            _schema("FireworksRequest"), _schema("FireworksResponse"),
        )},
        "/v1/rerank": {"post": _rerank_operation(
            "cohere-v1", "Cohere v1 rerank format", "Results best first, cut to `top_n`.",
            _schema("CohereRequest"), _schema("CohereResponse"),
        )},
        "/v2/rerank": {"post": _rerank_operation(
            "cohere-v2", "Cohere v2 rerank format", "Results best first, cut to `top_n`.",
            _schema("CohereRequest"), _schema("CohereResponse"),
        )},
        "/rerank": {"post": _rerank_operation(
            "cohere-or-tei", "Cohere (v1 answer) or TEI rerank format",
            "A body with `texts` is text-embeddings-inference's and gets TEI's bare list, sorted by score; "
            "any other body is Cohere's and gets a Cohere v1 answer.",
            cohere_or_tei_request, {"oneOf": [_schema("TeiResponse"), _schema("CohereResponse")]},
        )},
        "/infinity/rerank": {"post": _rerank_operation(
            "infinity", "Infinity rerank format",
            "Cohere's request (`raw_scores` gives logits); the answer's `document` is the bare string, as "
            "Infinity's. Its own base URL, `<gateway>/infinity`, because Infinity's and vLLM's clients send "
            "the same request to `/rerank` and parse the answer differently.",
            _schema("InfinityRequest"), _schema("InfinityResponse"),
        )},
        "/v1/models": {"get": _get(
            "models", "The models served", "With their aliases and fallback order.", _json(_schema("ModelList")),
        )},
        "/healthz": {"get": _get(
            "healthz", "Liveness", "Answers as soon as the gateway serves.", _json(_schema("Health")),
        )},
        "/readyz": {"get": _get(
            "readyz", "Readiness", "200 when the gateway can serve rerank requests, 503 when it cannot.",
            _json(_schema("Readiness")),
            extra={"503": {"description": "Not ready.", "headers": _request_id_header(),
                           "content": _json(_schema("Readiness"))}},
        )},
        "/metrics": {"get": _get(
            "metrics", "Prometheus metrics", "Prometheus text exposition format.",
            {"text/plain": {"schema": {"type": "string"}}},
        )},
        "/status": {"get": {**_get(
            "status", "Status page for ops",
            "Server-rendered HTML: each model's fallback order with provider health, breaker state and budget, "
            "cache hit rate and savings, recent errors, config load time. It reloads itself every 10 s.",
            {"text/html": {"schema": {"type": "string"}}},
            extra={"400": _ref("responses", "BadRequest")},
        ), "parameters": [{
            "name": "refresh", "in": "query", "required": False,
            "description": "Seconds between the page's own reloads; 0 turns them off. Default 10.",
            "schema": {"type": "integer", "minimum": 0, "maximum": 86400},
        }]}},
        "/status.json": {"get": _get(
            "status_json", "The status page's last hour, for scripts",
            "The series /status draws, per minute for the last hour, oldest minute first, kept in this process's "
            "memory: with several workers, the answering worker's own (`scope`: `worker`).",
            _json(_schema("StatusHistory")),
        )},
        "/openapi.json": {"get": _get("openapi", "This document", "OpenAPI 3.1.", _json({"type": "object"}))},
        "/admin/reload": {"post": _admin_operation(
            "reload", "Reload the config file",
            "Loads the config file again and serves new requests from it; requests in flight finish on the "
            "config they started with. 422 `invalid_config` leaves the running config in place.",
            _schema("ReloadAnswer"), extra_errors={"422": _ref("responses", "InvalidConfig")},
        )},
        "/admin/spend": {"get": _admin_operation(
            "spend", "Spend per budget window",
            "Today's and this month's tokens, spend (split into what providers reported and what the gateway "
            "estimated), holds of calls in flight and limits (UTC windows), per provider and gateway-wide; and "
            "whether the figures are the shared ledger's or this process's alone, with spend awaiting write-back.",
            _schema("SpendReport"),
        )},
        **_client_paths(),
    }


_MODEL_IN_PATH = {
    "name": "model", "in": "path", "required": True,
    "description": "A served model's name or alias; may contain `/`.",
    "schema": {"type": "string", "minLength": 1}, "example": "Qwen/Qwen3-Reranker-8B",
}


def _rerank_operation(
    operation_id: str, summary: str, description: str, request: Schema, answer: Schema,
    parameters: list[Schema] | None = None,
) -> dict[str, Any]:
    return {
        "tags": ["rerank"],
        "operationId": f"rerank_{operation_id.replace('-', '_')}",
        "summary": summary,
        "description": description,
        "security": [{"clientKey": []}, {}],
        "parameters": [*(parameters or []), _ref("parameters", "RequestId"), _ref("parameters", "RequestTimeout"),
                       _ref("parameters", "CacheControl")],
        "requestBody": {"required": True, "content": _json(request)},
        "responses": {
            "200": {
                "description": "Scored; the headers say who scored and what the cache held.",
                "headers": {
                    **_request_id_header(),
                    "X-Rerank-Provider": _ref("headers", "X-Rerank-Provider"),
                    "X-Rerank-Model": _ref("headers", "X-Rerank-Model"),
                    "X-Rerank-Cache": _ref("headers", "X-Rerank-Cache"),
                },
                "content": _json(answer),
            },
            **{status: _ref("responses", name) for status, name in (
                ("400", "BadRequest"), ("401", "Unauthorized"), ("403", "ModelNotAllowed"), ("404", "ModelNotFound"),
                ("413", "PayloadTooLarge"),
                ("422", "InvalidRequest"), ("429", "TooManyRequests"), ("500", "InternalError"),
                ("502", "BadGateway"), ("503", "ProvidersUnavailable"), ("504", "GatewayTimeout"),
            )},
        },
    }


def _get(operation_id: str, summary: str, description: str, content: dict[str, Any],
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "tags": ["ops"], "operationId": operation_id, "summary": summary, "description": description,
        "security": [],
        "responses": {"200": {"description": summary, "headers": _request_id_header(), "content": content},
                      **(extra or {})},
    }


def _admin_operation(operation_id: str, summary: str, description: str, answer: Schema | None,
                     extra_errors: dict[str, Any] | None = None, *, status: str = "200",
                     body: Schema | None = None, parameters: list[Any] | None = None) -> dict[str, Any]:
    """`answer` None: no content (204)."""
    success: dict[str, Any] = {"description": summary, "headers": _request_id_header()}
    if answer is not None:
        success["content"] = _json(answer)
    operation: dict[str, Any] = {
        "tags": ["admin"], "operationId": f"admin_{operation_id}", "summary": summary, "description": description,
        "security": [{"adminKey": []}],
        "responses": {
            status: success,
            "401": _ref("responses", "Unauthorized"),
            "404": _ref("responses", "AdminOff"),
            **(extra_errors or {}),
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": False, "content": _json(body)}
    if parameters:
        operation["parameters"] = parameters
    return operation


_CLIENT_IN_PATH = {"name": "name", "in": "path", "required": True, "description": "A created client's name.",
                   "schema": {"type": "string", "minLength": 1}}


def _client_paths() -> dict[str, Any]:
    errors = {"400": _ref("responses", "BadRequest"), "422": _ref("responses", "InvalidRequest"),
              "409": _ref("responses", "Conflict"), "503": _ref("responses", "StoreUnavailable")}
    return {
        "/admin/clients": {
            "post": _admin_operation(
                "create_client", "Create a client",
                "A client with its own key, created at run time: the key is in this answer only, and stored as a "
                "SHA-256 digest (in Redis when one is configured, else in this process, with a `warning`).",
                _schema("ClientCreated"), errors, status="201", body=_schema("ClientCreate")),
            "get": _admin_operation(
                "list_clients", "List clients",
                "Every client, named in the config (`source` `config`) or created (`admin`), with its spend; never a key.",
                _schema("ClientList")),
        },
        "/admin/clients/{name}": {
            "patch": _admin_operation(
                "change_client", "Change a created client's limits or budget", "Only `limits` and `budget` change.",
                _schema("ClientDescribed"), errors, body=_schema("ClientChange"), parameters=[_CLIENT_IN_PATH]),
            "delete": _admin_operation(
                "revoke_client", "Revoke a created client",
                "Its key is refused (401) on every worker and replica within a second; requests in flight finish.",
                None, errors, status="204", parameters=[_CLIENT_IN_PATH]),
        },
        "/admin/clients/{name}/rotate": {
            "post": _admin_operation(
                "rotate_client_key", "Give a created client a new key",
                "The old key keeps working for `grace_seconds` (default 0).", _schema("ClientRotated"), errors,
                status="201", body=_closed([], {"grace_seconds": {"type": "number", "minimum": 0, "maximum": 2592000}}),
                parameters=[_CLIENT_IN_PATH]),
        },
    }


def _request_id_header() -> dict[str, Any]:
    return {"X-Request-ID": _ref("headers", "X-Request-ID")}


# --- parameters, headers, error answers -----------------------------------------------------------


def _parameters() -> dict[str, Any]:
    return {
        "RequestId": {
            "name": "X-Request-ID", "in": "header", "required": False,
            "description": "Echoed back in the header and the body when it is 1-128 of `A-Za-z0-9._:-`; "
                           "any other value is not refused but replaced by a fresh id.",
            "schema": {"type": "string"},
        },
        "RequestTimeout": {
            "name": "X-Request-Timeout", "in": "header", "required": False,
            "description": "Seconds for the whole request, fallbacks included; may lower "
                           "server.request_timeout_seconds, never raise it. Not a positive number: 400.",
            "schema": {"type": "number", "exclusiveMinimum": 0},
        },
        "CacheControl": {
            "name": "Cache-Control", "in": "header", "required": False,
            "description": "`no-cache`: score fresh, still write the cache. `no-store`: neither read nor write it.",
            "schema": {"type": "string"}, "examples": {"no-cache": {"value": "no-cache"}, "no-store": {"value": "no-store"}},
        },
    }


def _headers() -> dict[str, Any]:
    return {
        "X-Request-ID": {
            "required": True, "description": "The client's X-Request-ID when it was a sane token, else a fresh one.",
            "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._:\-]{1,128}$"},
        },
        "X-Rerank-Provider": {
            "required": True,
            "description": "The provider that scored, `cache` when no provider was called, `degraded-lexical` "
                           "when every provider failed and [resilience] last_resort = \"lexical\" ranked by BM25.",
            "schema": {"type": "string", "minLength": 1},
        },
        "X-Rerank-Model": {
            "required": True,
            "description": "The canonical model that scored; another model than asked after a fallback_models fallback.",
            "schema": {"type": "string", "minLength": 1},
        },
        "X-Rerank-Cache": {
            "required": True, "description": "Pairs found in the score cache, and pairs sent upstream.",
            "schema": {"type": "string", "pattern": r"^hits=[0-9]+; misses=[0-9]+$"},
        },
        "Retry-After": {
            "required": True, "description": "Whole seconds until a retry may pass.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "WWW-Authenticate": {
            "required": True, "description": "The scheme a key is accepted in (RFC 9110 15.5.2, RFC 6750).",
            "schema": {"const": "Bearer"},
        },
    }


def _error_responses() -> dict[str, Any]:
    def error(description: str, *, retry_after: bool = False, challenge: bool = False,
              may_retry_after: bool = False) -> dict[str, Any]:
        headers = {
            **_request_id_header(), "X-Rerank-Provider": {"schema": {"const": "none"}, "required": True},
            "X-Rerank-Model": {"required": False, "schema": {"type": "string", "minLength": 1},
                               "description": "The model asked for, once it was resolved (429, 502, 504); not on errors found before."},
        }
        if retry_after:
            headers["Retry-After"] = _ref("headers", "Retry-After")
        elif may_retry_after:  # when the end of every cause is known (errors.AllProvidersFailed.of)
            headers["Retry-After"] = {"required": False, "description": "Whole seconds until a provider may answer "
                                      "again, when that is known.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}
        if challenge:
            headers["WWW-Authenticate"] = _ref("headers", "WWW-Authenticate")
        return {"description": description, "headers": headers, "content": _json(_schema("Error"))}

    return {
        "BadRequest": error("`bad_request`: body empty, not JSON, not UTF-8, or a bad X-Request-Timeout."),
        "Unauthorized": error("`unauthorized`: the client or admin key is missing or wrong.", challenge=True),
        "ModelNotAllowed": error("`model_not_allowed`: the client's key may not use this model; the message "
                                 "names it and those it may use."),
        "ModelNotFound": error("`model_not_found`: the model is not served; the message lists those that are."),
        "AdminOff": error("`not_found`: admin endpoints are off ([server] admin_key_env unset)."),
        "PayloadTooLarge": error("`payload_too_large`: over a configured limit; the message names it."),
        "InvalidRequest": error("`invalid_request`: a field missing, empty or of the wrong type; the message names it."),
        "InvalidConfig": error("`invalid_config`: the config file is invalid; the running config stays."),
        "TooManyRequests": error(
            "`budget_exhausted`: nothing was called; the providers passed over are over a spend budget (or rate "
            "limited), or the client's or its team's budget is spent. `rate_limited`: the same with the providers' "
            "rate limits alone, or the client or its team is over its requests or documents per minute, or its "
            "requests in flight. `Retry-After` is the seconds until the first of them may be called again, or until "
            "the client's request fits.", retry_after=True),
        "ProvidersUnavailable": error(
            "`providers_unavailable`: nothing was called; some providers are in back-off (breaker open, or refusing "
            "the gateway's key), the rest over budget or rate limited.", may_retry_after=True),
        "Conflict": error("`conflict`: a client of that name exists, or is named in the config file."),
        "StoreUnavailable": error("`overloaded`: the client store's Redis did not answer; nothing changed.",
                                  retry_after=True),
        "InternalError": error("`internal_error`: a bug; the gateway log has the details under the request id."),
        "BadGateway": error("`all_providers_failed` (providers were called and failed; the message lists each "
                            "provider's reason) or `upstream_rejected`.", may_retry_after=True),
        "GatewayTimeout": error("`upstream_timeout` (every provider failed, the last by timing out) or `deadline_exceeded`.",
                                may_retry_after=True),
    }


# --- schemas --------------------------------------------------------------------------------------


def _schemas() -> dict[str, Schema]:
    return {**_request_schemas(), **_answer_schemas(), **_ops_schemas()}


def _optional(schema: Schema) -> Schema:
    """An optional field: null is taken as absent."""
    return {"anyOf": [schema, {"type": "null"}]}


def _strings(description: str, item: Schema | None = None) -> Schema:
    return {"type": "array", "minItems": 1, "items": item or {"type": "string"}, "description": description}


_QUERY: Schema = {"type": "string", "minLength": 1}
_TOP_N: Schema = _optional({
    "type": "integer", "minimum": 1, "maximum": 2**53,
    "description": "A whole number; 2.0 counts, 1.5 does not. Past 2^53 a JSON number is no longer an exact integer.",
})
_MODEL: Schema = _optional({"type": "string", "description": "A served model's name or alias; empty or absent = server.default_model."})
_LIMITS = ("Over server.max_documents / max_document_chars: 413. A document over its model's tokens per document "
           "is truncated, scored as windows or refused (413), as the model's long_documents says.")


def _request_schemas() -> dict[str, Schema]:
    text_or_object = {"oneOf": [{"type": "string"}, {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}]}
    return {
        "DeepInfraRequest": {
            "type": "object", "required": ["queries"],
            "allOf": [
                {"oneOf": [{"required": ["documents"]}, {"required": ["passages"]}]},
                # The pairing rule. JSON Schema cannot compare two lengths, so "as many queries as
                # documents" is checked by the gateway (422); what the schema can say, it says.
                {"anyOf": [
                    {"description": "One query for every document.", "properties": {"queries": {"maxItems": 1}}},
                    {"description": "One query per document: as many queries as documents (else 422).",
                     "properties": {"queries": {"minItems": 2}, "documents": {"minItems": 2}, "passages": {"minItems": 2}}},
                ]},
            ],
            "properties": {
                "queries": _strings("One query for all documents, or one per document."),
                "documents": _strings(f"Exactly one of documents / passages. {_LIMITS}"),
                "passages": _strings("Older clients' name for documents."),
                "instruction": _optional({"type": "string"}),
            },
            "examples": [{"queries": ["how much does bankruptcy through the MFC cost?"],
                          "documents": ["The MFC in Kazan opens at 8:00.", "Out-of-court bankruptcy through the MFC is free."]}],
        },
        "FireworksRequest": {
            "type": "object", "required": ["query", "documents"],
            "properties": {
                "query": _QUERY, "documents": _strings(_LIMITS, text_or_object),
                "model": _MODEL, "task": _optional({"type": "string"}),
                "top_n": _TOP_N, "return_documents": _optional({"type": "boolean"}),
            },
            "examples": [{"model": "accounts/fireworks/models/qwen3-reranker-8b", "query": "cost of bankruptcy?",
                          "documents": ["The MFC opens at 8:00.", "Bankruptcy through the MFC is free."], "top_n": 1,
                          "return_documents": True}],
        },
        "InfinityRequest": {
            "type": "object", "required": ["query", "documents"],
            "description": "Infinity's rerank body; other fields are accepted and ignored.",
            "properties": {
                "query": _QUERY, "documents": _strings(_LIMITS, text_or_object), "model": _MODEL,
                "top_n": _TOP_N, "return_documents": _optional({"type": "boolean"}),
                "raw_scores": _optional({"type": "boolean"}),
            },
            "examples": [{"model": "qwen3-reranker-8b", "query": "cost of bankruptcy?",
                          "documents": ["The MFC opens at 8:00.", "Bankruptcy is free."], "return_documents": True}],
        },
        "CohereRequest": {
            "type": "object", "required": ["query", "documents"],
            "description": "`model` may be left out for server.default_model. Documents are strings or objects; an "
                           "object is ranked by its `text`, or by its `rank_fields` in order, and comes back whole "
                           "with `return_documents`. Cohere's other fields are accepted and ignored.",
            "properties": {
                "query": _QUERY, "documents": _strings(_LIMITS, {"oneOf": [{"type": "string"}, {"type": "object"}]}),
                "model": _MODEL, "top_n": _TOP_N, "return_documents": _optional({"type": "boolean"}),
                "max_tokens_per_doc": _optional({
                    "type": "integer", "minimum": 1, "maximum": 2**53,
                    "description": "v2 only: documents are truncated at this many tokens (the gateway's estimate), "
                                   "or at the model's own limit where that is smaller."}),
                "rank_fields": _optional(_strings(
                    "Object fields to rank on, in this order (`field: value` lines; one field ranks by its bare "
                    "value; fields a document lacks are left out). Without it an object needs a string `text`.")),
            },
            # Without rank_fields, an object document must carry its text.
            "if": {"properties": {"rank_fields": {"type": "array"}}, "required": ["rank_fields"]},
            "else": {"properties": {"documents": {"items": text_or_object}}},
            "examples": [{"query": "cost of bankruptcy?", "documents": ["The MFC opens at 8:00.", "Bankruptcy is free."], "top_n": 2}],
        },
        "TeiRequest": {
            "type": "object", "required": ["query", "texts"],
            "description": "`truncate`: true cuts a text over the model's tokens per document, false refuses it "
                           "(413); absent, the model's long_documents applies.",
            "properties": {
                "query": _QUERY, "texts": _strings(_LIMITS),
                "raw_scores": _optional({"type": "boolean"}), "return_text": _optional({"type": "boolean"}),
                "truncate": _optional({"type": "boolean"}),
                "truncation_direction": _optional({"enum": ["Left", "Right", "left", "right"],
                                                   "description": "Right (the default) keeps a text's start, Left its end."}),
            },
            "examples": [{"query": "cost of bankruptcy?", "texts": ["The MFC opens at 8:00.", "Bankruptcy is free."]}],
        },
    }


def _closed(required: list[str], properties: dict[str, Schema], **extra: Any) -> Schema:
    """An object the gateway writes: exactly these keys, the optional ones only when asked for."""
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False, **extra}


_COUNT: Schema = {"type": "integer", "minimum": 0}
_INDEX: Schema = {"type": "integer", "minimum": 0, "description": "The document's position in the request."}
_SCORE: Schema = {"type": "number", "minimum": 0, "maximum": 1, "description": "Relevance in [0, 1], higher is better."}
_DEGRADED: Schema = {
    "const": True,
    "description": "Only when every provider failed and the local BM25 last resort ranked the documents: "
                   "an order, not model relevance.",
}


def _answer_schemas() -> dict[str, Schema]:
    ranked = "Best first, cut to top_n; ties keep request order."
    return {
        "DeepInfraResponse": _closed(["scores", "input_tokens", "request_id", "inference_status"], {
            "scores": {"type": "array", "items": _SCORE, "description": "One per document, in request order."},
            "input_tokens": {**_COUNT, "description": "0 when every pair came from the cache."},
            "request_id": {"type": "string"},
            "inference_status": _closed(
                ["status", "runtime_ms", "cost", "tokens_generated", "tokens_input", "output_length"], {
                    "status": {"const": "succeeded"}, "runtime_ms": _COUNT,
                    "cost": {"type": "number", "minimum": 0, "description": "USD; 0 when every pair came from the cache."},
                    "tokens_generated": {"const": 0}, "tokens_input": _COUNT, "output_length": {"const": 0},
                }),
            "degraded": _DEGRADED,
        }),
        "FireworksResponse": _closed(["object", "model", "data", "results", "usage"], {
            "object": {"const": "list"},
            "model": {"type": "string", "description": "The model as the client named it, else the canonical name."},
            "data": {"type": "array", "items": _schema("FireworksResult"), "description": ranked},
            "results": {"type": "array", "items": _schema("FireworksResult"), "description": "The same list as data."},
            "usage": _closed(["prompt_tokens", "total_tokens"], {"prompt_tokens": _COUNT, "total_tokens": _COUNT}),
            "degraded": _DEGRADED,
        }),
        "FireworksResult": _closed(["index", "relevance_score"], {
            "index": _INDEX, "relevance_score": _SCORE,
            "document": {"type": "string", "description": "Only with return_documents."},
        }),
        "InfinityResponse": _closed(["object", "results", "model", "usage", "id", "created"], {
            "object": {"const": "rerank"},
            "results": {"type": "array", "items": _schema("InfinityResult"), "description": ranked},
            "model": {"type": "string", "description": "The model as the client named it, else the canonical name."},
            "usage": _closed(["prompt_tokens", "total_tokens"], {"prompt_tokens": _COUNT, "total_tokens": _COUNT}),
            "id": {"type": "string", "description": "The request id."},
            "created": {**_COUNT, "description": "Unix time of the answer."},
            "degraded": _DEGRADED,
        }),
        "InfinityResult": _closed(["index", "relevance_score"], {
            "index": _INDEX,
            "relevance_score": {"type": "number", "description": "Relevance in [0, 1]; a logit with raw_scores."},
            "document": {"type": "string", "description": "Only with return_documents."},
        }),
        "CohereResponse": _closed(["id", "results", "meta"], {
            "id": {"type": "string", "description": "The request id."},
            "results": {"type": "array", "items": _schema("CohereResult"), "description": ranked},
            "meta": _closed(["api_version", "billed_units", "tokens"], {
                "api_version": _closed(["version"], {"version": {"enum": ["1", "2"]}}),
                "billed_units": _closed(["search_units"], {
                    "search_units": {**_COUNT, "description": "One per 100 documents, as Cohere bills."}}),
                "tokens": _closed(["input_tokens", "output_tokens"], {"input_tokens": _COUNT, "output_tokens": {"const": 0}}),
                "warnings": {"type": "array", "items": {"type": "string"},
                             "description": "Only when degraded: says the scores are BM25's, not the model's."},
            }),
        }),
        "CohereResult": _closed(["index", "relevance_score"], {
            "index": _INDEX, "relevance_score": _SCORE,
            "document": {"type": "object", "description": "Only with return_documents: an object document as sent, "
                         "every field kept; a string document as `{\"text\": ...}`."},
        }),
        "TeiResponse": {"type": "array", "items": _schema("TeiResult"), "description": "Every document, best first."},
        "TeiResult": _closed(["index", "score"], {
            "index": _INDEX,
            "score": {"type": "number", "description": "Relevance in [0, 1]; a logit with raw_scores."},
            "text": {"type": "string", "description": "Only with return_text."},
        }),
        "Error": _closed(["error"], {"error": _closed(["type", "message", "request_id"], {
            "type": {"type": "string", "description": f"One of: {_ERROR_TYPES}."},
            "message": {"type": "string", "description": "What went wrong, for people; never holds a provider key."},
            "request_id": {"type": "string"},
        })}),
    }


def _ops_schemas() -> dict[str, Schema]:
    names = {"type": "array", "items": {"type": "string"}}
    return {
        "ModelList": _closed(["object", "data"], {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _closed(["id", "object", "aliases", "fallback"], {
                "id": {"type": "string"}, "object": {"const": "model"},
                "aliases": names, "fallback": {**names, "description": "Provider names in the order they are tried."},
            })},
        }),
        "Health": _closed(["status"], {"status": {"const": "ok"}}),
        "Readiness": {
            "type": "object", "required": ["status"],
            "properties": {
                "status": {"type": "string", "description": "`ready`, or why not."},
                "warnings": {**names, "description": "Ready, but look: a provider refusing, failing, rate limited or "
                             "over budget (with its reason), a budget past its alert share or refusing new pairs."},
                "providers": {"type": "object", "additionalProperties": _closed(
                    ["state", "reason", "until", "status", "breaker"], {
                        "state": {"enum": list(PROVIDER_STATES)},
                        "reason": {"type": ["string", "null"], "description": "Why not usable; the provider's own "
                                   "status and message when refusing."},
                        "until": {"type": ["number", "null"], "description": "Unix time it is tried again, or its "
                                  "budget window resets; null when unknown."},
                        "status": {"type": ["integer", "null"], "description": "Refusing: the HTTP status (401, 403)."},
                        "breaker": {"enum": list(BREAKER_STATE_VALUES)},
                    })},
            },
        },
        "ReloadAnswer": _closed(["status", "loaded_at", "models", "needs_restart"], {
            "status": {"enum": ["reloaded", "unchanged"],
                       "description": "`unchanged`: the file, and the secrets it names, were loaded already "
                                      "(the file watcher got there first); nothing was rebuilt."},
            "loaded_at": {"type": "number", "description": "Unix time the running config was loaded."},
            "models": {"type": "object", "additionalProperties": names, "description": "Each model's fallback order."},
            "needs_restart": {**names, "description": "Keys that changed in the file but take effect only after a "
                                                      "restart (listening address, logging, [cache]); every other key "
                                                      "applies to the next request."},
        }),
        "StatusHistory": _status_history_schema(),
        "SpendReport": _closed(["providers", "gateway", "clients", "teams", "ledger"], {
            "providers": {"type": "object", "additionalProperties": _closed(["today", "month", "chars_per_token"], {
                "today": _schema("SpendWindow"), "month": _schema("SpendWindow"),
                "chars_per_token": {"type": "number", "description": "The learned estimate used to reserve budget."},
            })},
            "gateway": _closed(["today", "month"], {"today": _schema("SpendWindow"), "month": _schema("SpendWindow")},
                               description="Gateway-wide, over every provider."),
            "clients": {"type": "object", "description": "Each configured client's spend, against its budget.",
                        "additionalProperties": _closed(["team", "today", "month"], {
                            "team": {"type": ["string", "null"]},
                            "today": _schema("SpendWindow"), "month": _schema("SpendWindow"),
                        })},
            "teams": {"type": "object", "description": "Each team's spend (all its clients'), against its budget.",
                      "additionalProperties": _closed(["today", "month"], {
                          "today": _schema("SpendWindow"), "month": _schema("SpendWindow")})},
            "ledger": _closed(["figures", "pending_usd", "pending_tokens", "partial"], {
                "figures": {"enum": ["shared", "per_process"],
                            "description": "`per_process`: this process's own figures (no shared ledger, or its Redis is "
                                           "unreachable: then the last shared figures seen plus what this process spent)."},
                "pending_usd": {"type": "number", "minimum": 0,
                                "description": "Spent while the shared ledger was unreachable, not yet written back to it."},
                "pending_tokens": _COUNT,
                "partial": {"type": "boolean",
                            "description": "The shared ledger holds less than this process saw it hold: its Redis "
                                           "restarted without that spend, or is still loading it."},
            }),
        }),
        **_client_schemas(),
        "SpendWindow": _closed(["window", "tokens", "usd", "reported", "estimated", "budget_usd", "remaining_usd",
                                "reserved_usd", "pending_usd", "pending_tokens", "resets_at"], {
            "window": {"type": "string", "description": "The UTC day (`2025-01-31`) or month (`2025-01`)."},
            "tokens": _COUNT,
            "usd": {"type": "number", "minimum": 0, "description": "Spent, settled calls only."},
            "reported": _schema("SpendPart"),  # what the providers' answers reported
            "estimated": _schema("SpendPart"),  # what the gateway estimated, for answers without usage
            "pending_usd": {"type": "number", "minimum": 0,
                            "description": "Of usd, what awaits write-back to the shared ledger."},
            "pending_tokens": _COUNT,
            "budget_usd": {"type": ["number", "null"], "description": "The limit; null when tracked, not limited."},
            "remaining_usd": {"type": ["number", "null"], "minimum": 0},
            "reserved_usd": {"type": "number", "minimum": 0, "description": "Holds of calls in flight."},
            "resets_at": {"type": "string", "format": "date-time"},
        }),
        "SpendPart": _closed(["tokens", "usd"], {"tokens": _COUNT, "usd": {"type": "number", "minimum": 0}},
                             description="The part of a window's tokens and usd that providers reported (`reported`) "
                                         "or the gateway estimated for answers without usage (`estimated`)."),
    }


def _client_schemas() -> dict[str, Schema]:
    optional_usd = {"type": ["number", "null"], "minimum": 0}
    optional_count = {"type": ["integer", "null"], "minimum": 1}
    budget = _closed([], {"daily_usd": optional_usd, "monthly_usd": optional_usd})
    limits = _closed([], {"requests_per_minute": optional_count, "documents_per_minute": optional_count,
                          "concurrent": optional_count})
    described: dict[str, Schema] = {"team": {"type": ["string", "null"]},
                 "models": {"type": ["array", "null"], "items": {"type": "string"}},
                 "budget": budget, "limits": limits}
    name: Schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
    return {
        "ClientCreate": _closed(["name"], {"name": name, **described}),
        "ClientChange": _closed([], {"budget": budget, "limits": limits}),
        "ClientDescribed": _closed(["name", *described], {"name": name, **described}),
        "ClientCreated": _closed(["name", *described, "key", "note"], {
            "name": name, **described, "key": {"type": "string", "description": "Shown this once."},
            "note": {"type": "string"}, "warning": {"type": "string", "description": "Not shared: no Redis."}}),
        "ClientRotated": _closed(["name", "key", "old_key_valid_for_seconds", "note"], {
            "name": name, "key": {"type": "string"}, "old_key_valid_for_seconds": {"type": "number"},
            "note": {"type": "string"}}),
        "ClientList": _closed(["clients"], {"clients": {"type": "array", "items": _closed(
            ["name", "source", *described, "spend"], {
                "name": {"type": "string"}, "source": {"enum": ["config", "admin"]}, **described,
                "spend": _closed(["today_usd", "month_usd"], {"today_usd": {"type": "number"},
                                                             "month_usd": {"type": "number"}})})}}),
    }


def _status_history_schema() -> Schema:
    minute: Schema = {"type": "array", "minItems": 60, "maxItems": 60}
    counts: Schema = {**minute, "items": {"type": "number", "minimum": 0}}
    measured: Schema = {**minute, "items": {"type": ["number", "null"], "minimum": 0},
                        "description": "null: nothing measured that minute."}
    per_provider = {"type": "object", "additionalProperties": measured}
    return _closed(
        ["generated_at", "scope", "pid", "minute_seconds", "minutes", "requests", "cache_hit_rate", "p95_ms",
         "spend_usd", "agreement_mae"], {
            "generated_at": {"type": "number", "description": "Unix time."},
            "scope": {"enum": ["process", "worker"],
                      "description": "`worker`: one of several workers on the port; each keeps its own hour."},
            "pid": {"type": "integer"},
            "minute_seconds": {"const": 60},
            "minutes": {**minute, "items": {"type": "integer"}, "description": "Unix time each minute starts."},
            "requests": _closed(["cache", "provider", "lexical", "error"],
                                {"cache": counts, "provider": counts, "lexical": counts, "error": counts},
                                description="Rerank requests per minute: every pair from the cache, some from a "
                                            "provider, the lexical last resort (every provider failed), or an "
                                            "error answer."),
            "cache_hit_rate": {**measured, "description": "Pairs served from the cache over pairs looked up."},
            "p95_ms": {**per_provider, "description": "Per provider: p95 of its answers to requests (within 15%)."},
            "spend_usd": {"type": "object", "additionalProperties": counts,
                          "description": "Per provider: USD settled that minute (requests, probes, shadow calls)."},
            "agreement_mae": {"type": "object", "additionalProperties": per_provider,
                              "description": "Per model and provider: mean absolute difference from the reference's "
                                             "scores in that minute's shadow calls."},
        })
