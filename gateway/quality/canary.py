"""Canary sets: queries whose relevant and irrelevant passages any honest reranker tells apart.

One JSON object per line:

    {"query": "...", "relevant": ["...", ...], "irrelevant": ["...", ...], "instruction": "...",
     "language": "ru"}

`instruction` and `language` are optional; blank lines are skipped; any other key is an error,
as in the config. Errors name the source and the line, so ops can fix the file they wrote.
A line's language is what the verdict is graded by (gateway.quality.judge); left out, it is the
script of the query ("cyrillic", "han", "latin", "other"), so a file's lines still group.

A canary tells models apart only when word overlap cannot pass it: relevant passages that
paraphrase the query rather than repeat it, and hard negatives (passages that share the query's
words and do not answer it). The built-in set is built that way; see README "Quality guard".
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

BUILTIN_SOURCE = "built-in canary"
_KEYS = frozenset({"query", "relevant", "irrelevant", "instruction", "language"})


class CanaryError(ValueError):
    """A canary file that cannot be read or breaks the format; the message names file and line."""


@dataclass(frozen=True, slots=True)
class CanaryLine:
    query: str
    relevant: tuple[str, ...]
    irrelevant: tuple[str, ...]
    instruction: str | None = None
    line: int = 0  # 1-based line in its source, for messages
    source: str = BUILTIN_SOURCE
    language: str = "other"  # what the verdict is graded by, per language

    @property
    def documents(self) -> tuple[str, ...]:
        """The passages as sent to a provider: relevant first, then irrelevant."""
        return self.relevant + self.irrelevant

    def where(self) -> str:
        return f"{self.source} line {self.line}"


def parse_canary(text: str, source: str) -> tuple[CanaryLine, ...]:
    lines = tuple(
        _parse_line(raw, number, source)
        for number, raw in enumerate(text.splitlines(), start=1)
        if raw.strip()
    )
    if not lines:
        raise CanaryError(f"{source}: no canary lines")
    return lines


def load_canary(path: str | Path) -> tuple[CanaryLine, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CanaryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CanaryError(f"{path}: not UTF-8 text") from None
    return parse_canary(text, str(path))


def builtin_canary() -> tuple[CanaryLine, ...]:
    """Russian, English and Chinese lines shipped with the gateway (used when no file is set)."""
    text = resources.files("gateway.quality").joinpath("builtin_canary.jsonl").read_text("utf-8")
    return parse_canary(text, BUILTIN_SOURCE)


def _parse_line(raw: str, number: int, source: str) -> CanaryLine:
    where = f"{source} line {number}"
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CanaryError(f"{where}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CanaryError(f"{where}: must be a JSON object")
    if unknown := sorted(set(value) - _KEYS):
        raise CanaryError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(sorted(_KEYS))}")
    query, instruction = value.get("query"), value.get("instruction")
    if not isinstance(query, str) or not query.strip():
        raise CanaryError(f"{where}: 'query' must be a non-empty string")
    if instruction is not None and not isinstance(instruction, str):
        raise CanaryError(f"{where}: 'instruction' must be a string when given")
    language = value.get("language")
    if language is not None and (not isinstance(language, str) or not language.strip()):
        raise CanaryError(f"{where}: 'language' must be a non-empty string when given")
    relevant, irrelevant = _passages(value, "relevant", where), _passages(value, "irrelevant", where)
    if both := set(relevant) & set(irrelevant):
        raise CanaryError(f"{where}: a passage is both relevant and irrelevant: {sorted(both)[0]!r}")
    return CanaryLine(query, relevant, irrelevant, instruction, number, source, language or script_of(query))


def script_of(text: str) -> str:
    """The script most of `text`'s letters are in: a language label for lines that name none."""
    counts = {"cyrillic": 0, "han": 0, "latin": 0}
    for char in text:
        if "\u0400" <= char <= "\u04ff":
            counts["cyrillic"] += 1
        elif "\u4e00" <= char <= "\u9fff":
            counts["han"] += 1
        elif char.isascii() and char.isalpha():
            counts["latin"] += 1
    script, count = max(counts.items(), key=lambda item: item[1])
    return script if count else "other"


def _passages(value: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    passages = value.get(key)
    if (not isinstance(passages, list) or not passages
            or not all(isinstance(p, str) and p.strip() for p in passages)):
        raise CanaryError(f"{where}: {key!r} must be a non-empty list of non-empty strings")
    return tuple(passages)
