"""Long documents shaped to what the model reads, between decode and the score cache.

    limit      tokens one document may take: the model's max_tokens_per_document, else what its
               context leaves after the query, the instruction and the prompt template; the
               smaller of that and the client's own (Cohere v2's max_tokens_per_doc)
    truncate   a longer document is cut at the limit, on a word boundary (TEI's "left": its end kept)
    chunk      a longer document is scored as overlapping windows, each a pair of its own (cached,
               billed, single-flighted as any pair); its score is its best window's
    refuse     a longer document makes the request 413, the limit named

Tokens are estimated from characters (models.*.chars_per_token), a figure fixed per model: the
same text is always cut the same way, so what was sent is what the cache key's passage digest
is of, and a text cut at another limit is another pair. Requests whose documents all fit, the
usual ones, cost one length check.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from gateway.config import ModelConfig
from gateway.errors import PayloadTooLarge
from gateway.models import LongDocuments, RerankRequest, RerankResult

# Tokens a reranker's prompt adds around each pair (Qwen3-Reranker's system and user template is
# about 60): counted against the context so that the pair, not just the document, fits.
TEMPLATE_TOKENS = 96
# A query that leaves less than this for its documents is refused: no document could be read.
MIN_DOCUMENT_TOKENS = 16
_SPACES = " \n\t"


class Shaped:
    """A request as it goes upstream, and the way back to the client's documents.

    `request.documents` are the texts sent: a long document truncated, or its windows in a row.
    `owners[i]` is the client's document that sent text i came from; None: one text each, in order.
    """

    def __init__(self, request: RerankRequest, owners: list[int] | None = None,
                 note: LongDocuments | None = None) -> None:
        self.request = request
        self.owners = owners
        self.note = note

    def merge(self, result: RerankResult, sent: Sequence[bool] | None = None) -> RerankResult:
        """`result` (of the sent texts) as scores of the client's documents: each its best window's.
        `sent`: per text, whether it went upstream (not found in the cache), to count the windows sent."""
        result.long_documents = self.note
        owners = self.owners
        if owners is None:
            return result
        scores: list[float] = []
        raw = result.raw_scores
        raw_kept: list[float | None] = []
        best_windows: dict[int, int] = {}
        first_of: dict[int, int] = {}
        for position, (owner, score) in enumerate(zip(owners, result.scores)):
            window = position - first_of.setdefault(owner, position)
            if window == 0:
                scores.append(score)
                raw_kept.append(None if raw is None else raw[position])
            elif score > scores[owner]:
                scores[owner] = score
                raw_kept[owner] = None if raw is None else raw[position]
                best_windows[owner] = window
            if window > 0:
                best_windows.setdefault(owner, 0)
        result.scores = scores
        result.raw_scores = raw_kept if raw is not None else None
        if self.note is not None:
            self.note.best_windows = best_windows
            if sent is not None:
                self.note.windows_sent = sum(went for owner, went in zip(owners, sent) if owner in best_windows)
        return result


def shape_documents(request: RerankRequest, model: str, settings: ModelConfig) -> Shaped:
    """The request with every document held to its model's limit, as `settings` and the client say."""
    ratio = settings.chars_per_token
    limit = _limit_tokens(request, model, settings, _longest(request.queries))
    # The longest query leaves the least room: if every document fits beside it, all fit.
    if _all_within(request.documents, int(limit * ratio)):
        return Shaped(request)
    policy = _policy(request, settings, limit)
    note = LongDocuments(limit_tokens=limit)
    documents: list[str] = []
    owners: list[int] = []
    queries: list[str] = []
    for index, (query, document) in enumerate(zip(request.queries, request.documents)):
        # Each pair's own limit: a shorter query leaves its documents more room.
        room = _limit_tokens(request, model, settings, len(query))
        size = int(room * ratio)
        if len(document) <= size:
            texts = [document]
        elif policy == "refuse":
            raise PayloadTooLarge(
                f"documents[{index}]: about {math.ceil(len(document) / ratio)} tokens exceed the {room} tokens per "
                f"document model {model!r} reads here (models.{model}.long_documents = \"refuse\", or the client's "
                "truncate = false); send it shorter or in parts")
        elif policy == "chunk":
            texts = windows(document, _window_chars(settings, size), int(settings.chunk_overlap_tokens * ratio))
            note.chunked += 1
            note.windows += len(texts)
        else:
            texts = [truncated(document, size, keep_end=request.truncate_from == "left")]
            note.truncated += 1
        documents.extend(texts)
        owners.extend([index] * len(texts))
        queries.extend([query] * len(texts))
    shaped = dataclasses.replace(request, queries=tuple(queries), documents=tuple(documents))
    return Shaped(shaped, owners if len(owners) > len(request.documents) else None, note)


def _longest(queries: Sequence[str]) -> int:
    if queries.count(queries[0]) == len(queries):  # one query for all (by identity, in C): most requests
        return len(queries[0])
    return max(map(len, queries))


def _all_within(documents: Sequence[str], chars: int) -> bool:
    """Whether no document is longer than `chars`. Joined first: a request's documents together
    are most often within one document's limit, and a join is a fifth of a len() per document."""
    return len("".join(documents)) <= chars or max(map(len, documents)) <= chars


def _limit_tokens(request: RerankRequest, model: str, settings: ModelConfig, query_chars: int) -> int:
    """Tokens a document may take beside a query of `query_chars` characters."""
    ratio = settings.chars_per_token
    instruction_chars = len(request.instruction or "")
    room = settings.context_tokens - TEMPLATE_TOKENS - math.ceil((query_chars + instruction_chars) / ratio)
    if room < MIN_DOCUMENT_TOKENS:
        raise PayloadTooLarge(
            f"query and instruction: about {settings.context_tokens - TEMPLATE_TOKENS - room} tokens leave no room for "
            f"a document in model {model!r}'s context of models.{model}.context_tokens = {settings.context_tokens}")
    limits = (room, settings.max_tokens_per_document, request.max_tokens_per_document)
    return min(limit for limit in limits if limit is not None)


def _policy(request: RerankRequest, settings: ModelConfig, limit: int) -> str:
    """How this request's long documents are held to the limit: the client's word where it gave one."""
    asked = request.max_tokens_per_document
    if asked is not None and asked <= limit:
        return "truncate"  # Cohere truncates at max_tokens_per_doc, as its API documents
    return request.long_documents or settings.long_documents


def _window_chars(settings: ModelConfig, limit_chars: int) -> int:
    if settings.chunk_tokens is None:
        return limit_chars
    return min(limit_chars, int(settings.chunk_tokens * settings.chars_per_token))


def truncated(text: str, size: int, keep_end: bool = False) -> str:
    """At most `size` characters of `text`, cut between words where one ends in its last half."""
    if len(text) <= size:
        return text
    if keep_end:
        start = len(text) - size
        return text[_word_start(text, start, start + size // 2):]
    return text[:_word_end(text, 0, size)]


def windows(text: str, size: int, overlap: int) -> list[str]:
    """`text` as windows of at most `size` characters, each starting `overlap` before the last
    one ended (at a word's start), cut between words, covering it all."""
    overlap = min(overlap, size // 2)  # each window moves on by half its size at least
    found: list[str] = []
    start = 0
    while True:
        end = _word_end(text, start, size)
        found.append(text[start:end])
        if end >= len(text):
            return found
        start = _word_start(text, max(start + 1, end - overlap), end)


def _word_end(text: str, start: int, size: int) -> int:
    """Where a window from `start` of at most `size` characters ends: after the last space in
    its second half, else at `size` (one word longer than half a window is cut inside)."""
    hard = start + size
    if hard >= len(text):
        return len(text)
    cut = max(text.rfind(space, start + size // 2, hard) for space in _SPACES)
    return hard if cut < 0 else cut + 1


def _word_start(text: str, start: int, before: int) -> int:
    """The first word that starts at `start` or after it, before `before`; else `start`."""
    if start == 0 or text[start - 1] in _SPACES:
        return start
    found = [at for at in (text.find(space, start, before) for space in _SPACES) if at >= 0]
    return min(found) + 1 if found else start

