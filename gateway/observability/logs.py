"""Logs: one structured line per request, JSON or text, and never a key or a passage.

`request_log_fields` builds the per-request fields from counts and names only: it takes no
text at all. The formatters add a second guard for everything else that is logged with
`extra=`: fields named like secrets are replaced with "[redacted]", fields named like request
text (query, documents, instruction, ...) with their length and a short digest, and a bearer
token inside a message is masked. A digest lets two log lines be matched up without saying
what the text was.

    log.info("rerank", extra=request_log_fields(...))
    -> {"ts": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "gateway.requests",
        "message": "rerank", "request_id": "...", "dialect": "cohere", ...}
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any, Final, Literal, NamedTuple

import orjson

from gateway.models import LongDocuments, Usage
from gateway.observability.deferred import Deferred

REQUEST_LOGGER: Final = "gateway.requests"
REDACTED: Final = "[redacted]"
_HANDLER_NAME: Final = "rerank-gateway"
_MAX_DEPTH: Final = 4

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_SECRET_NAME = re.compile(
    r"authorization|api[_-]?key|client[_-]?keys?|secret|password|passwd|credential|cookie|bearer"
    r"|(^|[_-])(key|keys|token)$",
    re.IGNORECASE,
)
_TEXT_NAME = re.compile(
    r"^(query|queries|document|documents|doc|docs|passage|passages|text|texts|instruction|input|inputs"
    r"|body|payload|content|contents)$",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_KEY_ASSIGNMENT = re.compile(r"(?i)\b(api[_-]?key|access[_-]?token|secret)=([^\s&\"',;]+)")


def text_digest(text: str) -> str:
    """A short, stable stand-in for a text: enough to match log lines, not to read it back."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class ProviderAttempt(NamedTuple):
    """One provider the router tried for a request: outcome is "ok" or a failure kind.

    A NamedTuple, not a frozen dataclass: as immutable, and made in a third of the time (every
    request makes one or more).
    """

    provider: str
    outcome: str
    ms: float
    panic: bool = False  # called although its breaker was open: every provider's was (the panic rule)


VETTED_FIELDS = "vetted_fields"


class _RequestFields(dict[str, Any]):
    """Marks a dict built by request_log_fields, so formatters skip the redaction walk."""


REQUEST_MESSAGE: Final = "rerank"


class RequestLog:
    """A request's line on the request logger: `logger.info("rerank", extra=...)`, its fields marked vetted.

    The record is the one Logger.info makes (the logger's makeRecord, the record factory, every
    filter and handler), so whatever the embedding app set up for logging applies to it too.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def write(self, fields: dict[str, Any]) -> None:
        """The line of request_log_fields' `fields`, passed through as built (nothing to redact)."""
        vetted = fields if isinstance(fields, _RequestFields) else _RequestFields(fields)
        self.logger.info(REQUEST_MESSAGE, extra={VETTED_FIELDS: vetted})


_REQUESTED_MODEL_CHARS = 200


def request_log_fields(
    *,
    request_id: str,
    dialect: str,
    model: str | None,
    status: int,
    documents: int,
    cache_hits: int,
    cache_misses: int,
    upstream_ms: float,
    total_ms: float,
    attempts: Sequence[ProviderAttempt] = (),
    error_type: str | None = None,
    usage: Usage | None = None,
    raw_scores: Sequence[float | None] | None = None,
    quality: str | None = None,
    requested_model: str | None = None,
    long_documents: LongDocuments | None = None,
    client: str | None = None,
    team: str | None = None,
) -> dict[str, Any]:
    """The fields of a request's log line (RequestLog.write). Counts and names only."""
    fields: dict[str, Any] = _RequestFields({
        "request_id": request_id,
        "dialect": dialect,
        "model": model,
        "status": status,
        "documents": documents,
        "cache_hits": cache_hits,
        "cache_misses": cache_misses,
        "providers": [_attempt_fields(attempt) for attempt in attempts],
        "upstream_ms": round(upstream_ms, 3),
        "total_ms": round(total_ms, 3),
    })
    if client is not None:  # the client's name, never its key
        fields["client"] = client
        fields["team"] = team
    if usage is not None:
        # What the request's upstream calls billed; estimated_*: the part priced from the
        # gateway's own token count because the answers reported none (TEI's never do).
        fields["tokens"] = usage.tokens
        fields["cost_usd"] = round(usage.cost_usd, 9)
        fields["estimated_tokens"] = usage.estimated_tokens
        fields["estimated_cost_usd"] = round(usage.estimated_cost_usd, 9)
    if error_type is not None:
        fields["error_type"] = error_type
    if raw_scores is not None:
        # The answer's scores were mapped onto the reference's scale; these are the provider's own
        # (per document, null where the score came from the cache).
        fields["raw_scores"] = list(raw_scores)
    if quality is not None:
        fields["quality"] = quality  # "failing": the serving provider fails its canary
    if requested_model is not None and requested_model != model:
        # The name the client sent, when an alias (or the catch-all) mapped it: capped, it is the client's string.
        fields["requested_model"] = requested_model[:_REQUESTED_MODEL_CHARS]
    if long_documents is not None:
        # Documents over the model's limit, and what became of them: cache_hits and cache_misses
        # count each window as the pair it is; best_windows, per chunked document, the one it scored by.
        fields["long_documents"] = {
            "limit_tokens": long_documents.limit_tokens, "truncated": long_documents.truncated,
            "chunked": long_documents.chunked, "windows": long_documents.windows,
            "windows_sent": long_documents.windows_sent,
            "best_windows": {str(document): window for document, window in long_documents.best_windows.items()},
        }
    return fields


def _attempt_fields(attempt: ProviderAttempt) -> dict[str, Any]:
    fields = {"provider": attempt.provider, "outcome": attempt.outcome, "ms": round(attempt.ms, 3)}
    if attempt.panic:
        fields["panic"] = True
    return fields


def redacted(name: str, value: Any, depth: int = 0) -> Any:
    """value as it may appear in a log under field `name`."""
    if _SECRET_NAME.search(name) and not isinstance(value, (bool, int, float, type(None))):
        return REDACTED
    if _TEXT_NAME.match(name):
        return _summary(value)
    if depth >= _MAX_DEPTH:
        return _summary(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # orjson would write every field of a dataclass as is; go through the names first.
        value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): redacted(str(key), item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(name, item, depth + 1) for item in value]
    if isinstance(value, str):
        return mask_secrets(value)
    return value


def mask_secrets(text: str) -> str:
    """text with bearer tokens and `api_key=...` values masked."""
    if "=" not in text and "bearer" not in text.lower():
        return text  # neither pattern can match: most lines, the request line's "rerank" among them
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _KEY_ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


def _summary(value: Any) -> Any:
    if isinstance(value, str):
        return {"chars": len(value), "sha256": text_digest(value)}
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, (list, tuple)):
        return {"count": len(value)}
    if isinstance(value, dict):
        return {"keys": len(value)}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return {"type": type(value).__name__}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra=` fields, redacted; a request line's fields as built, already safe."""
    vetted = getattr(record, VETTED_FIELDS, None)
    if isinstance(vetted, _RequestFields):
        return vetted  # built by request_log_fields from counts and names only: nothing to redact
    return {
        name: redacted(name, value)
        for name, value in vars(record).items()
        if name not in _RECORD_ATTRIBUTES and not name.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the `extra=` fields, exc."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        extras = extra_fields(record)
        if line.keys().isdisjoint(extras):
            line.update(extras)
        else:
            for name, value in extras.items():
                line.setdefault(name, value)  # an extra never overwrites the four above
        if record.exc_info:
            line["exc"] = mask_secrets(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        if isinstance(extras, _RequestFields):
            # request_log_fields' own: string keys only, so orjson's slower any-key path is not needed.
            return orjson.dumps(line, default=_fallback).decode()
        return orjson.dumps(line, default=_fallback, option=orjson.OPT_NON_STR_KEYS).decode()

    def _timestamp(self, created: float) -> str:
        """`2025-01-31T12:00:00.123Z`: the second's text is made once a second, not once a line."""
        second = int(created)
        if second != self._second[0]:
            text = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        # A table, not `:03d`: the format spec alone took 0.5 µs a line.
        return self._second[1] + _MILLISECONDS[int((created - second) * 1000)]


_MILLISECONDS: Final = tuple(f".{millisecond:03d}Z" for millisecond in range(1000))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`, with the same redaction as JSON."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = mask_secrets(record.message)
        text = super().formatMessage(record)
        extras = extra_fields(record)
        if extras:
            text += " " + " ".join(f"{name}={_text_value(value)}" for name, value in extras.items())
        return text

    def formatException(self, ei: Any) -> str:
        return mask_secrets(super().formatException(ei))


class TurnWrittenStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]  # typeshed's generic
    """A stream handler whose lines of a moment go out in one write.

    A write system call per request line (stderr is line-buffered) was a measurable part of a
    miss's CPU, and so was one per loop turn at low concurrency; FLUSH_DELAY_SECONDS (50 ms) after
    the first line since the last write (`observability/deferred.py`), the lines are written
    together, whole and in order. Off the loop (start-up, shutdown, another thread) a line is
    written at once, with whatever is pending before it, unless the loop's write is already due
    (then it goes with that); `flush` (logging.shutdown calls it at exit) writes what is left.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._write_later = Deferred(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if not self._write_later.book():
            self._write_pending()  # emit runs under the handler's lock

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            lines, self._pending = "".join(self._pending), []
            try:
                self.stream.write(lines)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr is gone (a closed pipe, interpreter exit): nowhere left to say so


def configure_logging(level: str, fmt: Literal["json", "text"]) -> None:
    """Log to stderr at level, as JSON lines or text; calling it again replaces its handler."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r}: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif fmt == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f"log format {fmt!r}: expected 'json' or 'text'")
    # The logging docs' own optimisations: our lines carry no caller, thread or process fields,
    # and looking them up (a stack walk for the caller) is most of what a log call costs.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    # Only our own handler is replaced: others (pytest's, an embedding app's) stay.
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    handler = TurnWrittenStreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(numeric)


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"=" for c in value):
        return value
    return orjson.dumps(value, default=_fallback, option=orjson.OPT_NON_STR_KEYS).decode()


def _fallback(value: Any) -> str:
    # Unknown objects are named, not str()-ed: their repr could hold anything.
    return f"<{type(value).__name__}>"
