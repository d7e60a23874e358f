"""Cheap language identification for English and Spanish, offline.

fastText's language model must be downloaded; a stop-word vote is enough to route documents to the
right per-language filters and to report the language mix. Anything else is `und`.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)

STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        [
            "the",
            "of",
            "and",
            "to",
            "a",
            "in",
            "is",
            "that",
            "it",
            "was",
            "for",
            "on",
            "as",
            "with",
            "he",
            "his",
            "be",
            "at",
            "by",
            "i",
            "this",
            "had",
            "not",
            "are",
            "but",
            "from",
            "or",
            "have",
            "an",
            "they",
            "which",
            "you",
            "were",
            "her",
            "she",
            "there",
            "would",
            "their",
            "we",
            "him",
            "been",
            "has",
            "when",
            "who",
            "will",
            "more",
            "no",
            "if",
            "out",
            "so",
            "what",
            "up",
            "its",
            "about",
            "into",
            "than",
            "them",
            "can",
            "only",
            "other",
        ]
    ),
    "es": frozenset(
        [
            "de",
            "la",
            "que",
            "el",
            "en",
            "y",
            "a",
            "los",
            "se",
            "del",
            "las",
            "un",
            "por",
            "con",
            "no",
            "una",
            "su",
            "para",
            "es",
            "al",
            "lo",
            "como",
            "más",
            "pero",
            "sus",
            "le",
            "ya",
            "o",
            "este",
            "sí",
            "porque",
            "esta",
            "entre",
            "cuando",
            "muy",
            "sin",
            "sobre",
            "también",
            "me",
            "hasta",
            "hay",
            "donde",
            "quien",
            "desde",
            "todo",
            "nos",
            "durante",
            "todos",
            "uno",
            "les",
            "ni",
            "contra",
            "otros",
            "ese",
            "eso",
            "ante",
            "ellos",
            "e",
            "esto",
            "mí",
            "antes",
            "algunos",
            "qué",
            "unos",
            "yo",
            "otro",
            "otras",
            "otra",
            "él",
            "tanto",
            "esa",
            "estos",
            "mucho",
            "quienes",
            "nada",
            "muchos",
            "cual",
            "poco",
            "ella",
            "estar",
            "estas",
            "algunas",
            "algo",
        ]
    ),
}


def detect_language(text: str, sample_chars: int = 4000) -> str:
    """'en', 'es' or 'und' from the share of each language's stop words in the first characters."""
    words = _WORD.findall(text[:sample_chars].lower())
    if len(words) < 5:
        return "und"
    scores = {lang: sum(w in stops for w in words) / len(words) for lang, stops in STOP_WORDS.items()}
    lang, best = max(scores.items(), key=lambda kv: kv[1])
    # Real prose in either language is >25 % stop words; below 10 % it is a list, code, or another language.
    return lang if best >= 0.10 else "und"


def stop_words(lang: str) -> list[str]:
    """Stop words for Gopher's quality rule; both lists for unknown languages."""
    if lang in STOP_WORDS:
        return sorted(STOP_WORDS[lang])
    return sorted(STOP_WORDS["en"] | STOP_WORDS["es"])
