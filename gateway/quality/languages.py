"""Which language of a model's canary a query is in, for the verdicts and agreement per language.

    script       Cyrillic, Han, Latin or other (gateway.quality.canary.script_of): a script only
                 one language of the canary is written in names that language (Cyrillic: ru)
    detector     where the canary holds several languages in Latin script (en and pt), a query
                 in Latin script is told by lingua (lingua-language-detector, the `languages`
                 extra), whose models ship inside its wheel and which is held to the canary's
                 Latin languages; until its models are loaded, or without it, such a query's
                 language is unknown
    uncovered    a script the canary has no line in is a language of its own, named by the
                 script ("cyrillic" beside an English-only canary): the provider's overall
                 verdict holds there, but its scores are shared only once shadow traffic in
                 that script has agreed with the reference's (gateway.quality.sharing)

A batch whose queries are in several languages, or in one the detector cannot tell, is MIXED:
it follows the model's overall verdicts and shares only what shares in every language.

Languages within one script that the canary does not tell apart (German beside an English-only
canary) are taken for the canary's language of that script.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.quality.canary import CanaryLine, script_of

log = logging.getLogger("gateway.quality")

MIXED = "*"  # several languages in one batch, or one that cannot be told
SCRIPTS = ("cyrillic", "han", "latin", "other")


class LatinDetector:
    """lingua, held to the canary's languages; its models load in a thread of their own, and until
    they have, `detect` says nothing (a second's stall on some request would be worse)."""

    def __init__(self, detector: Any, codes: dict[Any, str]) -> None:
        self._detector = detector
        self._codes = codes  # lingua Language -> the canary's label
        self._ready = threading.Event()
        threading.Thread(target=self._load, name="lingua-load", daemon=True).start()

    @classmethod
    def for_languages(cls, labels: Iterable[str]) -> LatinDetector | None:
        """A detector for these canary labels (ISO 639-1 or 639-3 codes); None, said in the log,
        when lingua is not installed or a label is not a code it knows."""
        labels = sorted(set(labels))
        try:
            from lingua import IsoCode639_1, IsoCode639_3, Language, LanguageDetectorBuilder
        except ImportError:
            log.warning("the canary holds %s in Latin script; install rerank-gateway[languages] (lingua) "
                        "to tell them apart: until then such queries follow the overall verdicts", ", ".join(labels))
            return None
        codes = {}
        for label in labels:
            try:
                if len(label) == 2:
                    codes[Language.from_iso_code_639_1(IsoCode639_1.from_str(label))] = label
                else:
                    codes[Language.from_iso_code_639_3(IsoCode639_3.from_str(label))] = label
            except ValueError:
                log.warning("canary language %r is not an ISO 639 code lingua knows: queries in Latin script "
                            "follow the overall verdicts", label)
                return None
        return cls(LanguageDetectorBuilder.from_languages(*codes).build(), codes)

    def _load(self) -> None:
        self._detector.detect_language_of("warm up")  # loads the models of every language held
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def detect(self, text: str) -> str | None:
        if not self._ready.is_set():
            return None
        found = self._detector.detect_language_of(text)
        return None if found is None else self._codes.get(found)


class QueryLanguages:
    """The languages of one model's canary, and which of them a query is in."""

    def __init__(self, lines: Sequence[CanaryLine]) -> None:
        by_script: dict[str, set[str]] = {}
        for line in lines:
            by_script.setdefault(script_of(line.query), set()).add(line.language)
        self._named = {script: next(iter(found)) for script, found in by_script.items() if len(found) == 1}
        latin = by_script.get("latin", set())
        self._latin_told_by_detector = len(latin) > 1
        self._latin = LatinDetector.for_languages(latin) if self._latin_told_by_detector else None
        covered = {line.language for line in lines}
        # Each canary language, and each script the canary has no line in.
        self.languages = tuple(sorted(covered | {script for script in SCRIPTS if script not in by_script}))

    @property
    def detector(self) -> LatinDetector | None:
        return self._latin

    def of(self, query: str) -> str:
        """The query's language: a canary language, an uncovered script, or MIXED when it cannot be told."""
        script = _script(query)
        if script == "latin" and self._latin_told_by_detector:
            found = None if self._latin is None else self._latin.detect(query)
            return MIXED if found is None else found
        return self._named.get(script, script)

    def of_batch(self, queries: Iterable[str]) -> str:
        """The one language of all these queries, else MIXED."""
        found = {self.of(query) for query in queries}
        return found.pop() if len(found) == 1 else MIXED


def _script(text: str) -> str:
    if text.isascii():  # the usual query, told without looking at each letter in Python
        return "latin" if any(char.isalpha() for char in text) else "other"
    return script_of(text)
