"""Stats: how big the corpus is (docs, bytes, tokens, size on disk at ~4 bytes/token), its languages,
and the funnel of documents removed at each stage."""

from __future__ import annotations

import re
import sys

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from tasks.config import CorpusConfig
from tasks.corpus.shards import shard_reader
from tasks.dt import counters, run_pipeline
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage

STAGE = "stats"
_WORD = re.compile(r"\w+")
_PUNCT = re.compile(r"[^\w\s]")
# Before a tokenizer exists: subword tokenizers cut ~1.3 tokens per word in English and Spanish prose,
# and most punctuation marks are tokens of their own.
TOKENS_PER_WORD = 1.3


def estimate_tokens(text: str) -> int:
    return round(TOKENS_PER_WORD * len(_WORD.findall(text)) + len(_PUNCT.findall(text)))


class CountCorpus(PipelineStep):
    type = "📊 - STATS"
    name = "corpus_count"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            lang = doc.metadata.get("lang", "und")
            n_bytes, tokens = len(doc.text.encode("utf-8")), estimate_tokens(doc.text)
            for key, value in (
                ("docs", 1),
                ("bytes", n_bytes),
                ("chars", len(doc.text)),
                ("tokens", tokens),
                (f"docs_{lang}", 1),
                (f"bytes_{lang}", n_bytes),
                (f"tokens_{lang}", tokens),
            ):
                self.stat_update(key, value=value)
            yield doc


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def corpus_stats(counts: dict[str, float], bytes_per_token: float, funnel: list[dict]) -> dict:
    docs, n_bytes, tokens = (
        int(counts.get("docs", 0)),
        int(counts.get("bytes", 0)),
        int(counts.get("tokens", 0)),
    )
    langs = sorted({k.split("_", 1)[1] for k in counts if k.startswith("docs_")})
    size = tokens * bytes_per_token
    return {
        "documents": docs,
        "bytes": n_bytes,
        "chars": int(counts.get("chars", 0)),
        "tokens_estimate": tokens,
        "token_estimate_method": f"{TOKENS_PER_WORD} per word + 1 per punctuation mark",
        "bytes_per_token_measured": round(n_bytes / tokens, 3) if tokens else None,
        "bytes_per_token_assumed": bytes_per_token,
        "estimated_size_bytes": int(size),
        "estimated_size": human_bytes(size),
        "reference": f"30 T tokens x {bytes_per_token:g} B/token = {human_bytes(30e12 * bytes_per_token)}",
        "languages": {
            lang: {
                "documents": int(counts.get(f"docs_{lang}", 0)),
                "bytes": int(counts.get(f"bytes_{lang}", 0)),
                "tokens_estimate": int(counts.get(f"tokens_{lang}", 0)),
                "share_of_tokens": round(counts.get(f"tokens_{lang}", 0) / tokens, 4) if tokens else 0.0,
            }
            for lang in langs
        },
        "funnel": funnel,
    }


def funnel_of(stages: list[Manifest]) -> list[dict]:
    """Documents in and out of each stage, in pipeline order."""
    rows = []
    for m in stages:
        kept = int(m.stats.get("documents", 0))
        before = int(m.stats.get("documents_in", kept))
        rows.append(
            {"stage": m.stage, "documents_in": before, "documents_out": kept, "removed": before - kept}
        )
    return rows


def render_markdown(stats: dict) -> str:
    lines = [
        "# Corpus report",
        "",
        f"**{stats['documents']:,} documents**, {human_bytes(stats['bytes'])} of text, "
        f"~{stats['tokens_estimate']:,} tokens (estimate: {stats['token_estimate_method']}).",
        f"Estimated size at {stats['bytes_per_token_assumed']:g} bytes/token: **{stats['estimated_size']}** "
        f"(measured {stats['bytes_per_token_measured']} bytes/token; {stats['reference']}).",
        "",
        "## Funnel",
        "",
        "| stage | in | out | removed |",
        "|---|---:|---:|---:|",
        *[
            f"| {r['stage']} | {r['documents_in']:,} | {r['documents_out']:,} | {r['removed']:,} |"
            for r in stats["funnel"]
        ],
        "",
        "## Languages",
        "",
        "| language | documents | bytes | tokens (est.) | share of tokens |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {lang} | {v['documents']:,} | {human_bytes(v['bytes'])} | {v['tokens_estimate']:,} | "
            f"{100 * v['share_of_tokens']:.1f} % |"
            for lang, v in stats["languages"].items()
        ],
    ]
    return "\n".join(lines) + "\n"


def measure(storage: Storage, cfg: CorpusConfig, parts: list[Manifest], history: list[Manifest]) -> Manifest:
    """Stats of the corpus made of `parts`' shards; `history`: the stages that produced the newest part."""

    def build(out: StageDir) -> dict:
        step = CountCorpus()
        folders = [storage.datafolder(p.stage, p.key, "shards") for p in parts]
        totals = run_pipeline([shard_reader(*folders), step], out.work("logs"), cfg.tasks, cfg.workers)
        stats = corpus_stats(counters(totals, step.name), cfg.stats.bytes_per_token, funnel_of(history))
        stats["parts"] = [
            {"stage": p.stage, "key": p.key, "shards": storage.url(p.stage, p.key, "shards")} for p in parts
        ]
        storage.write_json_atomic(stats, STAGE, out.key, "stats.json")
        storage.write_bytes_atomic(render_markdown(stats).encode(), STAGE, out.key, "report.md")
        return stats

    inputs = {
        **{f"part_{i}": m for i, m in enumerate(parts)},
        **{f"history_{i}": m for i, m in enumerate(history)},
    }
    return run_stage(storage, STAGE, cfg.stats, inputs, code_version(sys.modules[__name__]), build)


def shard_folders(storage: Storage, corpus: Manifest) -> list:
    """The shard folders that make up a measured corpus (what the tokenizer reads)."""
    return [storage.datafolder(p["stage"], p["key"], "shards") for p in corpus.stats["parts"]]
