"""The providers' wire formats as the emulator speaks them: decode a call, encode an answer (faults included)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gateway.emulator.scores import logit, logit_of, misbehaving_score, sigmoid, words

NAN_MARK = "__emulator_nan__"  # orjson writes NaN as null; this string is swapped for NaN
_COST_PER_TOKEN = 0.05 / 1e6


# --- decoded requests ------------------------------------------------------------------

class BadBody(Exception):
    """The body does not fit the provider's format; answered as 422."""


@dataclass(frozen=True, slots=True)
class Call:
    queries: list[str]  # one per document: every provider scores (query, document) pairs
    documents: list[str]
    instruction: str | None = None
    top_n: int | None = None
    return_documents: bool = False
    raw_scores: bool = False
    model: str | None = None
    api_version: str = "2"
    truncate: bool = False  # TEI's: cut a pair over the context rather than refuse it

    def scores(self) -> list[float]:
        query_words: dict[str, frozenset[str]] = {}  # queries usually repeat: tokenize each once
        logits = [logit(query_words.get(q) or query_words.setdefault(q, words(q)), q, d, self.instruction)
                  for q, d in zip(self.queries, self.documents)]
        return logits if self.raw_scores else [sigmoid(x) for x in logits]

    def misbehaving_scores(self, mode: str, seed: int) -> list[float]:
        """What a quietly wrong provider answers: in range and well-formed, raw or not."""
        scores = [misbehaving_score(mode, q, d, self.instruction, seed)
                  for q, d in zip(self.queries, self.documents)]
        return [logit_of(p) for p in scores] if self.raw_scores else scores

    def tokens(self) -> int:
        extra = len(self.instruction or "")
        chars = sum(len(q) + len(d) + extra for q, d in zip(self.queries, self.documents))
        return max(len(self.documents), chars // 4)

    def over_context(self, context_tokens: int) -> tuple[int, int] | None:
        """(index, tokens) of the first pair longer than the context, counted as `tokens` bills them."""
        extra = len(self.instruction or "")
        for index, (query, document) in enumerate(zip(self.queries, self.documents)):
            tokens = (len(query) + len(document) + extra) // 4
            if tokens > context_tokens:
                return index, tokens
        return None

    def cut_to(self, context_tokens: int) -> Call:
        """Every pair cut to the context at the document's end, as TEI does with `truncate`."""
        extra = len(self.instruction or "")
        documents = [d[: max(0, 4 * context_tokens + 3 - len(q) - extra)] for q, d in zip(self.queries, self.documents)]
        return replace(self, documents=documents)


def _field(body: Any, name: str, kind: type, default: Any = ...) -> Any:
    if not isinstance(body, dict):
        raise BadBody("request body must be a JSON object")
    value = body.get(name)
    if value is None and default is not ...:
        return default
    # bool is an int subclass, but a top_n of `true` is a client bug worth surfacing
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadBody(f"field '{name}' is missing or has the wrong type")
    return value


def _strings(body: Any, name: str) -> list[str]:
    values: list[str] = _field(body, name, list)  # checked just below
    if not all(isinstance(v, str) for v in values):
        raise BadBody(f"field '{name}' must be a list of strings")
    return values


def _top_n(body: Any) -> int | None:
    top_n: int | None = _field(body, "top_n", int, None)
    if top_n is not None and top_n < 1:
        raise BadBody("field 'top_n' must be at least 1")
    return top_n


def _decode_deepinfra(body: Any) -> Call:
    queries, documents = _strings(body, "queries"), _strings(body, "documents")
    if len(queries) != len(documents):
        raise BadBody("queries and documents must have the same length")
    return Call(queries, documents, instruction=_field(body, "instruction", str, None))


def _decode_fireworks(body: Any) -> Call:
    documents = _strings(body, "documents")
    return Call([_field(body, "query", str)] * len(documents), documents,
                 instruction=_field(body, "task", str, None), top_n=_top_n(body),
                 return_documents=_field(body, "return_documents", bool, False),
                 model=_field(body, "model", str))


def _cohere_text(doc: Any) -> str:
    # v1 clients still send {"text": ...} objects; v2 servers accept them too
    text = doc.get("text") if isinstance(doc, dict) else doc
    if not isinstance(text, str):
        raise BadBody("each document must be a string or an object with a 'text' string")
    return text


def _decode_cohere(body: Any, api_version: str) -> Call:
    documents = [_cohere_text(d) for d in _field(body, "documents", list)]
    model = _field(body, "model", str, None) if api_version == "1" else _field(body, "model", str)
    return Call([_field(body, "query", str)] * len(documents), documents, top_n=_top_n(body),
                 return_documents=_field(body, "return_documents", bool, False),
                 model=model, api_version=api_version)


def _decode_tei(body: Any) -> Call:
    texts = _strings(body, "texts")
    return Call([_field(body, "query", str)] * len(texts), texts,
                 raw_scores=_field(body, "raw_scores", bool, False),
                 return_documents=_field(body, "return_text", bool, False),
                 truncate=_field(body, "truncate", bool, False))


# --- encoding answers, with the body-shaped faults --------------------------------------

def _distort_scores(scores: list[Any], mode: str | None) -> list[Any]:
    """DeepInfra's bare score list, bent the way a misbehaving upstream would."""
    if mode == "cut":
        scores = scores[: len(scores) // 2]
    elif mode in ("wrong_count", "out_of_range", "duplicate_index"):
        scores = scores[:-1]  # without indices, a bad index can only show as a short list
    if mode == "nan" and scores:
        scores[0] = NAN_MARK
    return scores


def _distort_results(items: list[dict[str, Any]], mode: str | None, n_docs: int,
                     rng: random.Random, score_key: str) -> list[dict[str, Any]]:
    """A correct, sorted result list, bent the way a misbehaving upstream would."""
    if mode == "shuffle":
        rng.shuffle(items)
    elif mode == "cut":
        items = items[: len(items) // 2]
    elif mode == "wrong_count":
        items = items[:-1]
    elif mode == "out_of_range" and items:
        items[-1]["index"] = n_docs
    elif mode == "duplicate_index" and items:
        if len(items) == 1:
            items.append(dict(items[0]))
        items[-1]["index"] = items[0]["index"]
    if mode == "nan" and items:
        items[0][score_key] = NAN_MARK
    return items


def _results(call: Call, scores: list[float], fault: str | None, rng: random.Random,
             score_key: str, doc_key: str,
             as_doc: Callable[[str], Any] = str) -> list[dict[str, Any]]:
    """Sorted, top_n-cut results in the index-bearing formats, faults applied."""
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)  # stable on ties
    items: list[dict[str, Any]] = [{"index": i, score_key: scores[i]} for i in order[: call.top_n or len(order)]]
    if call.return_documents:
        for item in items:
            item[doc_key] = as_doc(call.documents[item["index"]])
    return _distort_results(items, fault, len(scores), rng, score_key)


def _encode_deepinfra(call: Call, scores: list[float], fault: str | None,
                      rng: random.Random, runtime_ms: int) -> Any:
    tokens = call.tokens()
    return {"scores": _distort_scores(scores, fault), "input_tokens": tokens, "request_id": None,
            "inference_status": {"status": "succeeded", "runtime_ms": runtime_ms,
                                 "cost": tokens * _COST_PER_TOKEN, "tokens_generated": 0,
                                 "tokens_input": tokens, "output_length": 0}}


def _encode_fireworks(call: Call, scores: list[float], fault: str | None,
                      rng: random.Random, runtime_ms: int) -> Any:
    tokens = call.tokens()
    return {"object": "list", "model": call.model,
            "data": _results(call, scores, fault, rng, "relevance_score", "document"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode_cohere(call: Call, scores: list[float], fault: str | None,
                   rng: random.Random, runtime_ms: int) -> Any:
    results = _results(call, scores, fault, rng, "relevance_score", "document",
                       lambda text: {"text": text})
    # meta carries exactly the golden sample's keys: no "tokens", which rerank answers omit
    return {"id": str(uuid.uuid4()), "results": results,
            "meta": {"api_version": {"version": call.api_version},
                     "billed_units": {"search_units": 1}}}


def _encode_tei(call: Call, scores: list[float], fault: str | None,
                rng: random.Random, runtime_ms: int) -> Any:
    return _results(call, scores, fault, rng, "score", "text")


Encoder = Callable[[Call, list[float], str | None, random.Random, int], Any]


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    path: str
    decode: Callable[[Any], Call]
    encode: Encoder
    error_body: Callable[[str], Any]
    too_long_status: int = 400  # the status of a pair over the model's context


PROVIDER_ROUTES = (
    Provider("deepinfra", "/v1/inference/{model:.+}", _decode_deepinfra, _encode_deepinfra,
              lambda msg: {"detail": {"error": msg}}),
    Provider("fireworks", "/inference/v1/rerank", _decode_fireworks, _encode_fireworks,
              lambda msg: {"error": msg}),
    Provider("cohere", "/v1/rerank", lambda body: _decode_cohere(body, "1"), _encode_cohere,
              lambda msg: {"message": msg}),
    Provider("cohere", "/v2/rerank", lambda body: _decode_cohere(body, "2"), _encode_cohere,
              lambda msg: {"message": msg}),
    Provider("tei", "/rerank", _decode_tei, _encode_tei, lambda msg: {"error": msg}, too_long_status=413),
)


