"""Words for lexical matching: runs of Unicode letters and digits, lowercased, lightly stemmed.

Queries are often Russian, where one noun has a dozen case forms; without some stemming
"кошка" would not match "кошки". A real stemmer (Snowball) would be a new dependency, so this
strips only inflectional endings that rarely end a stem:

- Cyrillic: noun and adjective case endings made of vowels, ь, й, or a vowel with м/х/в/й
  (-а, -ы, -ой, -ами, -ого, ...). Consonant-final stems stay whole, so "стол", "стола" and
  "столами" all become "стол". Verb endings are left alone: "-ет", "-ит", "-л" end too many nouns.
- Latin: plural -s/-es/-ies and -ing/-ed, the forms English queries and passages differ by most.

Both sides of a match go through the same rules, so a wrong stem mostly costs a missed match
between two forms of one word ("музей" -> "муз", "музея" -> "музе"); a false match needs two
words that differ only by one of these endings.

Chinese and Japanese write no spaces between words, and a Korean word carries its particles: a
run of Han, kana or Hangul is one "word" to a letters-and-digits pattern, so two sentences of it never share a term and
every BM25 score ties. Such runs become overlapping character bigrams ("破产办理" -> "破产",
"产办", "办理"), as Lucene's CJKAnalyzer makes them; a lone character stays itself. Bigrams need
no dictionary, and most two-character words are matched whole.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")  # \w without the underscore: letters and digits in any script
# Hangul Jamo, kana, CJK Extension A, unified and compatibility ideographs, Hangul syllables.
_CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_HAS_CJK = re.compile(f"[{_CJK}]")
_CJK_OR_WORD = re.compile(f"[{_CJK}]+|[^\\W_{_CJK}]+")  # a CJK run, or a run of other letters and digits

_RUSSIAN_ENDINGS = frozenset(
    {
        "ыми", "ими", "ами", "ями", "ого", "его", "ому", "ему",
        "ой", "ей", "ий", "ый", "ая", "яя", "ое", "ее", "ые", "ие", "ую", "юю",
        "ых", "их", "ым", "им", "ах", "ях", "ов", "ев", "ом", "ем", "ам", "ям", "ью",
        "а", "я", "о", "е", "ы", "и", "у", "ю", "ь", "й",
    }
)
_RUSSIAN_MIN_STEM = 3
# (ending, shortest stem it may leave): "-ing" and "-ed" need four letters left, or "string"
# and "need" would lose theirs.
_ENGLISH_ENDINGS = (("ing", 4), ("ed", 4), ("es", 3), ("s", 3))


def words(text: str) -> list[str]:
    """The words of `text`, lowercased, with ё written е as most Russian text does; CJK runs as
    their character bigrams."""
    text = text.lower().replace("ё", "е")
    if _HAS_CJK.search(text) is None:
        return _WORD.findall(text)
    found: list[str] = []
    for run in _CJK_OR_WORD.findall(text):
        if _HAS_CJK.match(run) is None or len(run) == 1:  # another script's word, or a lone character
            found.append(run)
        else:
            found.extend(run[i : i + 2] for i in range(len(run) - 1))
    return found


def tokenize(text: str) -> list[str]:
    return [stem(word) for word in words(text)]


def stem(word: str) -> str:
    """The stem of a word from `words()`; other scripts and numbers come back as they are."""
    last = word[-1:]
    if "а" <= last <= "я":
        return _russian_stem(word)
    if "a" <= last <= "z":
        return _english_stem(word)
    return word


def forms(stem_: str) -> set[str]:
    """Every word whose stem is `stem_`: matching a few query stems against a thousand passages
    then takes a set lookup per passage word instead of stemming each one."""
    candidates = {stem_}
    candidates.update(stem_ + ending for ending in _RUSSIAN_ENDINGS)
    candidates.update(stem_ + ending for ending, _ in _ENGLISH_ENDINGS)
    if stem_.endswith("y"):
        candidates.add(stem_[:-1] + "ies")
    # A candidate may stem elsewhere (a longer ending wins, or the stem would be too short).
    return {word for word in candidates if stem(word) == stem_}


def _russian_stem(word: str) -> str:
    for size in (3, 2, 1):  # longest ending first, so "-ами" wins over "-и"
        if len(word) - size >= _RUSSIAN_MIN_STEM and word[-size:] in _RUSSIAN_ENDINGS:
            return word[:-size]
    return word


def _english_stem(word: str) -> str:
    if word.endswith("ies") and len(word) > 5:
        return word[:-3] + "y"  # queries -> query, while ties -> tie below
    for ending, shortest_stem in _ENGLISH_ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= shortest_stem:
            if ending == "s" and word.endswith(("ss", "us", "is")):
                return word  # class, status, analysis are not plurals
            if ending == "es" and not word.endswith(("sses", "xes", "ches", "shes", "zes")):
                continue  # "games" is game+s, while "boxes" is box+es
            return word[: -len(ending)]
    return word
