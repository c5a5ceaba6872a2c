"""The emulator's scores: word overlap standing in for a model, and the quietly wrong variants."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

# Faults that answer well-formed, in-range scores that are quietly wrong: only a quality check
# (canary, agreement with another provider) can tell them from honest answers.
QUIET_FAULT_MODES = frozenset({"rescale", "template", "random"})

_WORD = re.compile(r"[^\W_]+")  # Unicode letters and digits: queries are often not English


# The built-in canary is written so that word overlap fails it (paraphrased answers, hard
# negatives sharing the query's words). A provider the emulator plays honestly stands in for a
# model that reads, so on the canary's own pairs it answers as one does: every relevant passage
# fully "overlapping", every irrelevant one not at all. Read as data, not imported: the emulator
# shares no code with the gateway. Real models are run against the set in tests/test_canary_models.py.
_BUILTIN_CANARY = Path(__file__).resolve().parent.parent / "quality" / "builtin_canary.jsonl"


def _read_canary_answers(path: Path) -> Mapping[tuple[str, str], float]:
    answers: dict[tuple[str, str], float] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.strip():
            line = json.loads(raw)
            answers.update({(line["query"], passage): 1.0 for passage in line["relevant"]})
            answers.update({(line["query"], passage): 0.0 for passage in line["irrelevant"]})
    return MappingProxyType(answers)


_CANARY_ANSWERS = _read_canary_answers(_BUILTIN_CANARY)


# --- scoring -------------------------------------------------------------------------

def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _overlap(query_words: frozenset[str], query: str, document: str) -> float:
    """What relevance the emulator sees: the canary's answer on its own pairs, else word overlap."""
    answer = _CANARY_ANSWERS.get((query, document))
    return len(query_words & words(document)) / max(1, len(query_words)) if answer is None else answer


def logit(query_words: frozenset[str], query: str, document: str,
           instruction: str | None) -> float:
    overlap = _overlap(query_words, query, document)
    # A hash-derived jitter keeps pairs with equal overlap from tying and lets the
    # instruction move the score a little, like a real instruction-aware reranker.
    key = "\x1f".join((query, document, instruction or "")).encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return 6.0 * overlap - 3.0 + int.from_bytes(digest, "big") / 2.0**64 - 0.5


def emulated_logit(query: str, document: str, instruction: str | None = None) -> float:
    return logit(words(query), query, document, instruction)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def emulated_score(query: str, document: str, instruction: str | None = None) -> float:
    return sigmoid(emulated_logit(query, document, instruction))


# --- quiet misbehaviour: valid answers from the wrong model ------------------------------

def _unit_hash(*parts: str) -> float:
    """A uniform number in (0, 1) fixed by `parts`: a pair-dependent 'noise' that repeats."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def _rescaled(query_words: frozenset[str], query: str, document: str,
              instruction: str | None) -> float:
    # The same model's order behind another output scale (a missing sigmoid temperature,
    # a calibration layer): every ranking survives, every cached score is off.
    return sigmoid(logit(query_words, query, document, instruction)) ** 3


def _other_template(query_words: frozenset[str], query: str, document: str,
                    instruction: str | None) -> float:
    # A prompt template the model was not trained on: the instruction is lost, relevance
    # still shows but weakly, and pair-dependent noise of about its size reorders results.
    overlap = _overlap(query_words, query, document)
    return sigmoid(2.0 * overlap - 1.0 + 4.0 * (_unit_hash("template", query, document) - 0.5))


def misbehaving_score(mode: str, query: str, document: str, instruction: str | None = None,
                      seed: int = 0) -> float:
    """The probability a quietly misbehaving provider answers for one pair in `mode`
    (one of QUIET_FAULT_MODES); `seed` is the emulator's, which only 'random' uses."""
    if mode == "random":  # fixed per pair and seed, unrelated to relevance
        return _unit_hash("random", str(seed), query, document)
    if mode == "rescale":
        return _rescaled(words(query), query, document, instruction)
    if mode == "template":
        return _other_template(words(query), query, document, instruction)
    raise ValueError(f"not a quiet fault mode: {mode!r}; known: {', '.join(sorted(QUIET_FAULT_MODES))}")


def logit_of(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


