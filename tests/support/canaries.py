"""A canary the emulator's honest word-overlap scoring passes by a wide margin, for tests whose
subject is not the canary itself (cache groups, calibration): they keep working whatever the
built-in set asks of a real model.

Every line grades its passages by the share of query words they carry, so the scores spread
evenly over the emulator's whole range (logits about +3, +1.8, +0.6, -0.6, -1.8, -3, each
jittered by up to 0.5), which a calibration fitted on them needs; the narrowest margin is 0.2.
"""

from __future__ import annotations

from pathlib import Path

import orjson

_QUERIES = [
    ("bankruptcy", "procedure", "cost", "fee", "court"),
    ("passport", "renewal", "office", "hours", "saturday"),
    ("tax", "deduction", "apartment", "purchase", "mortgage"),
    ("state", "duty", "marriage", "registration", "amount"),
    ("pension", "certificate", "online", "request", "days"),
    ("parking", "permit", "resident", "district", "price"),
    ("benefit", "child", "monthly", "payment", "income"),
    ("vehicle", "registration", "plate", "replacement", "documents"),
]


def word_overlap_canary(directory: Path) -> Path:
    """Eight lines of six passages (48 pairs), written to `directory`/canary.jsonl. A passage
    carries five, four, three (relevant), two, one or none (irrelevant) of its query's five words."""
    path = directory / "canary.jsonl"
    lines = []
    for number, words in enumerate(_QUERIES):
        passages = [" ".join(words[:share]) + f" filler text, note {number}" for share in range(5, -1, -1)]
        lines.append(orjson.dumps({"query": " ".join(words), "relevant": passages[:3], "irrelevant": passages[3:]}).decode())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
