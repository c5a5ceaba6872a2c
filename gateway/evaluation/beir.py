"""A labelled retrieval set in the BEIR layout, checked as it is read.

    DIR/corpus.jsonl        {"_id", "text", "title"?}
    DIR/queries.jsonl       {"_id", "text"}
    DIR/qrels/test.tsv      header `query-id corpus-id score`, tab-separated (or DIR/qrels.tsv)
    DIR/candidates.jsonl    optional: {"query_id", "corpus_ids"}, a first stage's lists

Every error names the file and the line, so a hand-made set is quick to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

QRELS_HEADER = ("query-id", "corpus-id", "score")
QRELS_PATHS = ("qrels/test.tsv", "qrels.tsv")


class DatasetError(ValueError):
    """The set cannot be read or breaks the layout; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Dataset:
    corpus: dict[str, str]  # id -> the passage as a reranker sees it: "title text"
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> corpus id -> graded relevance
    candidates: dict[str, list[str]] | None  # a given first stage, or None for BM25

    def judged_queries(self) -> list[str]:
        """The queries evaluated: those with qrels, in the order queries.jsonl lists them."""
        return [query_id for query_id in self.queries if query_id in self.qrels]


def load_beir(folder: str | Path) -> Dataset:
    folder = Path(folder)
    corpus = _read_corpus(folder / "corpus.jsonl")
    queries = _read_queries(folder / "queries.jsonl")
    qrels = _read_qrels(_qrels_path(folder), queries, corpus)
    candidates_path = folder / "candidates.jsonl"
    candidates = _read_candidates(candidates_path, queries, corpus) if candidates_path.exists() else None
    return Dataset(corpus, queries, qrels, candidates)


def _qrels_path(folder: Path) -> Path:
    for relative in QRELS_PATHS:
        if (folder / relative).is_file():
            return folder / relative
    raise DatasetError(f"{folder}: no qrels: expected {' or '.join(QRELS_PATHS)}")


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _read_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) of each line of a JSONL file, `where` being "path line N" for errors."""
    for number, line in _read_lines(path):
        where = f"{path} line {number}"
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise DatasetError(f"{where}: must be a JSON object")
        yield where, value


def _text_field(value: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    text = value.get(key)
    if text is None and not required:
        return ""
    # BEIR ids are strings, but some sets write numbers: the same id either way
    if key in ("_id", "query_id") and isinstance(text, int) and not isinstance(text, bool):
        return str(text)
    if not isinstance(text, str) or (required and not text.strip()):
        raise DatasetError(f"{where}: {key!r} must be a non-empty string")
    return text


def _read_corpus(path: Path) -> dict[str, str]:
    corpus: dict[str, str] = {}
    for where, value in _read_objects(path):
        doc_id = _unique(_text_field(value, "_id", where), corpus, where)
        title, text = _text_field(value, "title", where, required=False), _text_field(value, "text", where)
        corpus[doc_id] = f"{title} {text}" if title else text
    if not corpus:
        raise DatasetError(f"{path}: no passages")
    return corpus


def _read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for where, value in _read_objects(path):
        queries[_unique(_text_field(value, "_id", where), queries, where)] = _text_field(value, "text", where)
    if not queries:
        raise DatasetError(f"{path}: no queries")
    return queries


def _unique(key: str, seen: dict[str, Any], where: str) -> str:
    if key in seen:
        raise DatasetError(f"{where}: _id {key!r} appears twice")
    return key


def _read_qrels(path: Path, queries: dict[str, str], corpus: dict[str, str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    lines = _read_lines(path)
    number, header = next(lines, (1, ""))
    if tuple(header.split("\t")) != QRELS_HEADER:
        raise DatasetError(f"{path} line {number}: the header must be {chr(9).join(QRELS_HEADER)!r} "
                           f"(tab-separated), found {header!r}")
    for number, line in lines:
        where = f"{path} line {number}"
        fields = line.split("\t")
        if len(fields) != 3:
            raise DatasetError(f"{where}: expected 3 tab-separated fields, found {len(fields)}")
        query_id, doc_id, score = fields
        _known(query_id, queries, "query-id", "queries.jsonl", where)
        _known(doc_id, corpus, "corpus-id", "corpus.jsonl", where)
        try:
            qrels.setdefault(query_id, {})[doc_id] = int(score)
        except ValueError:
            raise DatasetError(f"{where}: score {score!r} is not an integer") from None
    if not qrels:
        raise DatasetError(f"{path}: no judgements")
    return qrels


def _read_candidates(path: Path, queries: dict[str, str], corpus: dict[str, str]) -> dict[str, list[str]]:
    candidates: dict[str, list[str]] = {}
    for where, value in _read_objects(path):
        query_id = _text_field(value, "query_id", where)
        _known(query_id, queries, "query_id", "queries.jsonl", where)
        doc_ids = value.get("corpus_ids")
        if not isinstance(doc_ids, list) or not doc_ids:
            raise DatasetError(f"{where}: 'corpus_ids' must be a non-empty list")
        for doc_id in doc_ids:
            _known(str(doc_id), corpus, "corpus id", "corpus.jsonl", where)
        candidates[query_id] = list(dict.fromkeys(str(doc_id) for doc_id in doc_ids))
    return candidates


def _known(key: str, table: dict[str, Any], name: str, file: str, where: str) -> None:
    if key not in table:
        raise DatasetError(f"{where}: {name} {key!r} is not in {file}")
