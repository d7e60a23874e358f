"""Toxicity scoring and filtering for English and Spanish documents.

Two scorers share one interface (`score(text, lang) -> float`, higher is more toxic):

- `WordListScorer`: the LDNOOBW lists that C4 used, but as a rate (bad-word hits per word) so a single
  incidental word in a long page does not drop it.
- `ClassifierScorer`: a hashed n-gram logistic regression, trained offline by
  `benchmarks/toxicity_eval.py --train` and shipped as plain JSON weights; inference is numpy only.

`ToxicityFilter` runs any of them as a datatrove filter and records every score in the metadata.
"""

from __future__ import annotations

import html
import json
import math
import re
import unicodedata
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

if TYPE_CHECKING:
    from datatrove.pipeline.writers.disk_base import DiskWriter

    from tasks.config import DetoxConfig

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
LANGS = ("en", "es")
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lowercased Unicode words; NFC first so a decomposed 'n + ~' still equals 'ñ'."""
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def base_lang(lang: str | None) -> str:
    """'es-ES' -> 'es'; anything that is not English or Spanish -> 'und'."""
    code = (lang or "und").lower().replace("_", "-").split("-")[0]
    return code if code in LANGS else "und"


@runtime_checkable
class ToxicityScorer(Protocol):
    name: str

    def score(self, text: str, lang: str) -> float: ...


# --- word lists -----------------------------------------------------------------------------------

Phrase = tuple[str, ...]


def read_word_list(lang: str) -> list[str]:
    """The shipped LDNOOBW entries for `lang` ('en' or 'es'), one per line."""
    ref = RESOURCES / "ldnoobw" / lang
    return [line.strip() for line in ref.read_text(encoding="utf-8").splitlines() if line.strip()]


class WordListScorer:
    """Bad-word hits per word, against the list of the document's language (both lists when unknown).

    Entries match whole words only ('ass' does not hit 'class') and exactly as listed: accents must
    agree and no plural or inflection is guessed. A multi-word entry ('blue waffle', 'hijo de puta')
    counts once per occurrence, and the longest entry wins where entries overlap. Entries without any
    word character (an emoji) are counted as substrings.
    """

    name = "wordlist"

    def __init__(self, lists: dict[str, list[str]] | None = None) -> None:
        # Plain entries only: the index is built on first use, so pickling to workers stays cheap.
        self.lists = lists
        self._index: dict[str, tuple[dict[str, list[Phrase]], list[str]]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None}

    def _build(self) -> dict[str, tuple[dict[str, list[Phrase]], list[str]]]:
        lists = self.lists if self.lists is not None else {lang: read_word_list(lang) for lang in LANGS}
        entries = {lang: lists.get(lang, []) for lang in LANGS}
        entries["und"] = [e for lang in LANGS for e in entries[lang]]
        index = {}
        for lang, items in entries.items():
            by_first: dict[str, set[Phrase]] = {}
            symbols: set[str] = set()
            for item in items:
                phrase = tuple(words(item))
                if phrase:
                    by_first.setdefault(phrase[0], set()).add(phrase)
                else:
                    symbols.add(unicodedata.normalize("NFC", item))
            longest_first = {k: sorted(v, key=len, reverse=True) for k, v in by_first.items()}
            index[lang] = (longest_first, sorted(symbols))
        return index

    def hits(self, text: str, lang: str) -> tuple[int, int]:
        """(bad-word hits, words) in `text`."""
        if self._index is None:
            self._index = self._build()
        by_first, symbols = self._index[base_lang(lang)]
        toks = words(text)
        found = sum(text.count(s) for s in symbols) if symbols else 0
        i = 0
        while i < len(toks):
            step = 1
            for phrase in by_first.get(toks[i], ()):
                if tuple(toks[i : i + len(phrase)]) == phrase:
                    found += 1
                    step = len(phrase)
                    break
            i += step
        return found, len(toks)

    def score(self, text: str, lang: str) -> float:
        found, n = self.hits(text, lang)
        return min(1.0, found / n) if n else float(found > 0)


# --- linear classifier ----------------------------------------------------------------------------

MODEL_FORMAT = "forja-toxicity-linear/1"
_URL = re.compile(r"https?://\S+|www\.\S+")
_MENTION = re.compile(r"@\w+")


def _classifier_words(text: str) -> list[str]:
    # Tweets carry HTML entities, links and @handles; collapse them so they are not learned as topics.
    text = _MENTION.sub(" @user ", _URL.sub(" http ", html.unescape(text)))
    return words(text)


def _bucket(feature: str, buckets: int) -> int:
    # crc32 is stable across processes and runs, unlike Python's salted hash().
    return zlib.crc32(feature.encode("utf-8")) % buckets


@lru_cache(maxsize=1 << 16)
def _word_buckets(word: str, buckets: int) -> tuple[int, ...]:
    """The unigram and char 3-5-gram buckets of one word ('char_wb' style: n-grams of ' word ')."""
    padded = f" {word} "
    grams = [f"w {word}"]
    grams += [f"c {padded[i : i + n]}" for n in (3, 4, 5) for i in range(len(padded) - n + 1)]
    return tuple(_bucket(g, buckets) for g in grams)


def classifier_features(text: str, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse feature vector of `text`: (bucket indices, values), log-scaled counts with unit L2 norm.

    Features: word unigrams and bigrams and char 3-5-grams within words, hashed into `buckets`.
    Training (benchmarks/toxicity_eval.py) and inference both use this function.
    """
    toks = _classifier_words(text)
    counts: Counter[int] = Counter()
    for word, k in Counter(toks).items():
        for b in _word_buckets(word, buckets):
            counts[b] += k
    for a, b in zip(toks, toks[1:], strict=False):
        counts[_bucket(f"b {a} {b}", buckets)] += 1
    if not counts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    val = np.log1p(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
    return idx, val / np.linalg.norm(val)


def default_model_path() -> Path:
    return RESOURCES / "toxicity-classifier.json"


def save_model(path: str | Path, weights: np.ndarray, bias: float, meta: dict[str, Any]) -> None:
    """Write weights as integers in units of `scale` (1e-4): dense, small, diffable, and exact enough."""
    scale = 1e-4
    q = np.rint(np.asarray(weights, dtype=np.float64) / scale).astype(np.int64)
    doc = {
        "format": MODEL_FORMAT,
        "buckets": int(q.size),
        "bias": round(float(bias), 6),
        "scale": scale,
        **meta,
        "weights": q.tolist(),
    }
    Path(path).write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")


class ClassifierScorer:
    """P(toxic) from the shipped hashed n-gram logistic regression (language-agnostic; `lang` unused)."""

    name = "classifier"

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        self._weights: np.ndarray | None = None
        self._bias = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Workers reload the JSON instead of receiving a pickled weight array per task.
        return {**self.__dict__, "_weights": None}

    def _load(self) -> np.ndarray:
        path = Path(self.path) if self.path else default_model_path()
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path}: not a {MODEL_FORMAT} model")
        weights = np.asarray(doc["weights"], dtype=np.float64) * float(doc["scale"])
        if weights.size != doc["buckets"]:
            raise ValueError(f"{path}: {weights.size} weights for {doc['buckets']} buckets")
        self._bias = float(doc["bias"])
        self._weights = weights
        return weights

    def score(self, text: str, lang: str = "und") -> float:
        weights = self._weights if self._weights is not None else self._load()
        idx, val = classifier_features(text, weights.size)
        z = float(weights[idx] @ val) + self._bias
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


# --- datatrove filter -----------------------------------------------------------------------------


class ToxicityFilter(BaseFilter):
    """Drops a document when any scorer reaches its threshold; writes `toxicity_<scorer>` metadata.

    Every scorer runs on every document, so excluded documents carry all scores for threshold tuning.
    The language comes from `metadata['lang']` (or datatrove's `metadata['language']`); unknown
    languages are scored against both word lists.
    """

    name = "toxicity"

    def __init__(
        self, scorers: list[tuple[ToxicityScorer, float]], exclusion_writer: DiskWriter | None = None
    ) -> None:
        super().__init__(exclusion_writer)
        if not scorers:
            raise ValueError("ToxicityFilter needs at least one (scorer, threshold) pair")
        self.scorers = list(scorers)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = doc.metadata.get("lang") or doc.metadata.get("language") or "und"
        verdict: bool | tuple[bool, str] = True
        for scorer, threshold in self.scorers:
            s = scorer.score(doc.text, lang)
            doc.metadata[f"toxicity_{scorer.name}"] = round(s, 4)
            if s >= threshold and verdict is True:
                verdict = (False, f"toxic_{scorer.name}")
        return verdict


def build_toxicity_filter(cfg: DetoxConfig, exclusion_writer: DiskWriter | None = None) -> ToxicityFilter:
    """The filter for `corpus.detox` (the caller checks `cfg.enabled`)."""
    scorers: list[tuple[ToxicityScorer, float]] = []
    if cfg.scorer in ("wordlist", "any"):
        scorers.append((WordListScorer(), cfg.wordlist_threshold))
    if cfg.scorer in ("classifier", "any"):
        scorers.append((ClassifierScorer(), cfg.classifier_threshold))
    return ToxicityFilter(scorers, exclusion_writer=exclusion_writer)
