"""Clean: normalise text, redact PII, drop documents that fail length and quality heuristics.

The quality filters are datatrove's (Gopher quality and repetition, C4, FineWeb), run with the word
tokenizer and stop words of each document's language, so Spanish prose is judged as Spanish.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable
from functools import partial

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer

from tasks.config import CleanConfig, CorpusConfig
from tasks.corpus import lang as lang_module
from tasks.corpus.lang import stop_words
from tasks.corpus.shards import iter_records, shard_reader, shard_writer
from tasks.dt import counters, run_pipeline, written
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage

STAGE = "clean"
LANGUAGES = ("en", "es")
# C0/C1 control characters except tab and newline: they break tokenizers and mean a bad conversion.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class NormalizeText(BaseFormatter):
    """Unicode normal form (NFC keeps `ñ` one code point), Unix newlines, no control characters."""

    name = "normalize"

    def __init__(self, form: str = "NFC"):
        super().__init__()
        self.form = form

    def format(self, text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.form != "none":
            text = unicodedata.normalize(self.form, text)
        text = _CONTROL.sub("", text)
        return "\n".join(line.rstrip() for line in text.split("\n")).strip()


class RedactPII(PIIFormatter):
    """datatrove's e-mail and public-IP redaction, with e-mail addresses that may hold any letter.

    Its pattern is ASCII-only, so `maria.núñez@correo.es` (valid since RFC 6531, and common in Spanish)
    slipped through untouched.
    """

    name = "📞 PII"

    def __init__(self):
        super().__init__()
        self.emails_replacer = PIIReplacer(
            r"(?<![\w.+-])[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*@(?:[^\W_](?:[\w-]*[^\W_])?\.)+"
            r"[^\W\d_]{2,}\b",
            ("email@example.com", "firstname.lastname@example.org"),
        )


class LengthFilter(BaseFilter):
    name = "length"

    def __init__(self, min_chars: int, max_chars: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_chars, self.max_chars = min_chars, max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if len(doc.text) < self.min_chars:
            return False, "too_short"
        if len(doc.text) > self.max_chars:
            return False, "too_long"
        return True


class ByLanguage(BaseFilter):
    """One datatrove filter per language, chosen by `metadata.lang` (other languages: English rules,
    stop words of both)."""

    def __init__(self, name: str, make: Callable[[str], BaseFilter], exclusion_writer=None):
        self.name = name  # before super().__init__: datatrove names the step's stats from it
        super().__init__(exclusion_writer)
        self.make = make
        self._by_lang: dict[str, BaseFilter] = {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = doc.metadata.get("lang")
        lang = lang if lang in LANGUAGES else "und"
        if lang not in self._by_lang:
            self._by_lang[lang] = self.make(lang)
        return self._by_lang[lang].filter(doc)


def _tokenizer_lang(lang: str) -> str:
    return lang if lang in LANGUAGES else "en"


class GopherQuality(GopherQualityFilter):
    """Gopher's rules, with the alphabetic-word rule on whitespace-separated words as in the paper.

    datatrove counts every punctuation token as a word there, so prose with numbers, commas and
    parentheses (most encyclopedic text, most Spanish dialogue) fails the 80 % rule.
    """

    def __init__(self, lang: str, min_alpha_words: float = 0.8):
        super().__init__(
            stop_words=stop_words(lang), language=_tokenizer_lang(lang), max_non_alpha_words_ratio=None
        )
        self.min_alpha_words = min_alpha_words

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        verdict = super().filter(doc)
        if verdict is not True:
            return verdict
        words = doc.text.split()
        if sum(any(c.isalpha() for c in w) for w in words) < self.min_alpha_words * len(words):
            return False, "gopher_below_alpha_threshold"
        return True


def _gopher_quality(lang: str) -> BaseFilter:
    return GopherQuality(lang)


def _gopher_repetition(lang: str) -> BaseFilter:
    return GopherRepetitionFilter(language=_tokenizer_lang(lang))


def _c4(lang: str, min_sentences: int = 5) -> BaseFilter:
    return C4QualityFilter(language=_tokenizer_lang(lang), min_num_sentences=min_sentences)


def _fineweb(lang: str) -> BaseFilter:
    return FineWebQualityFilter(language=_tokenizer_lang(lang))


QUALITY_FILTERS: dict[str, Callable[[str], BaseFilter]] = {
    "gopher_repetition": _gopher_repetition,
    "gopher_quality": _gopher_quality,
    "c4_quality": _c4,
    "fineweb_quality": _fineweb,
}


def removed_samples(out: StageDir, name: str, n: int) -> list[dict]:
    """The first `n` documents a filter removed: id, reason and the start of the text."""
    samples = []
    for rec in iter_records(out.folder("removed", name)):
        if len(samples) >= n:
            break
        samples.append(
            {"id": rec["id"], "reason": rec["metadata"].get("filter_reason"), "text": rec["text"][:300]}
        )
    return samples


def filter_report(stats, out: StageDir, names: list[str], samples_per_filter: int) -> dict[str, dict]:
    """Per filter: documents removed, removed by reason, and a few of them."""
    report = {}
    for name in names:
        c = counters(stats, name)
        report[name] = {
            "removed": int(c.get("dropped", 0)),
            "reasons": {k[len("dropped_") :]: int(v) for k, v in c.items() if k.startswith("dropped_")},
            "samples": removed_samples(out, name, samples_per_filter),
        }
    return report


def clean_steps(cfg: CleanConfig, out: StageDir) -> tuple[list, list[str]]:
    excluded = partial(_exclusion_writer, out)
    steps: list = [NormalizeText(cfg.normalize_unicode)]
    if cfg.redact_pii:
        steps.append(RedactPII())
    steps.append(LengthFilter(cfg.min_chars, cfg.max_chars, exclusion_writer=excluded("length")))
    names = ["length"]
    for name, make in QUALITY_FILTERS.items():
        if name == "c4_quality":
            make = partial(_c4, min_sentences=cfg.c4_min_sentences)
        if getattr(cfg, name):
            steps.append(ByLanguage(name, make, exclusion_writer=excluded(name)))
            names.append(name)
    return steps, names


def _exclusion_writer(out: StageDir, name: str):
    return shard_writer(out.folder("removed", name))


def clean(storage: Storage, cfg: CorpusConfig, collected: Manifest) -> Manifest:
    def build(out: StageDir) -> dict:
        steps, names = clean_steps(cfg.clean, out)
        source = storage.datafolder(collected.stage, collected.key, "shards")
        stats = run_pipeline(
            [shard_reader(source), *steps, shard_writer(out.folder("shards"))],
            out.work("logs"),
            tasks=cfg.tasks,
            workers=cfg.workers,
        )
        filters = filter_report(stats, out, names, cfg.clean.samples_per_filter)
        return {
            "documents_in": collected.stats.get("documents", 0),
            "documents": written(stats),
            "filters": filters,
        }

    version = code_version(sys.modules[__name__], lang_module)
    key_config = {"clean": cfg.clean, "tasks": cfg.tasks}
    return run_stage(storage, STAGE, _dump(key_config), {"collected": collected}, version, build)


def _dump(d: dict) -> dict:
    return {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in d.items()}
