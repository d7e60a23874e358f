"""The tokenizer stages as Prefect tasks, with their report in the UI."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.config import ShardsConfig, TokenizerConfig
from tasks.manifest import Manifest
from tasks.prefect_utils import stage_task
from tasks.storage import Storage
from tasks.tokenizer.shards import tokenize_corpus
from tasks.tokenizer.train import train_tokenizer


def render_report(tokenizer: Manifest, shards: Manifest) -> str:
    t, s = tokenizer.stats, shards.stats
    lines = [
        "# Tokenizer report",
        "",
        f"**{t['model_type'].upper()}, {t['vocab_size']:,} pieces**; special tokens: "
        + ", ".join(f"`{k}`={v}" for k, v in t["special_tokens"].items()),
        "",
        "| held-out language | documents | bytes/token | tokens/word |",
        "|---|---:|---:|---:|",
        *[
            f"| {lang} | {v['documents']} | {v['bytes_per_token']} | {v['tokens_per_word']} |"
            for lang, v in t["heldout"].items()
        ],
        "",
        f"First learned pieces: {' '.join(f'`{p}`' for p in t['learned_pieces'])}",
        "",
        "## Token shards",
        "",
        f"{s['tokens']:,} tokens ({s['dtype']}): train {s['totals']['train']['tokens']:,}, "
        f"val {s['totals']['val']['tokens']:,}; {s['bytes_per_token']} bytes/token. "
        f"The corpus stage estimated {s['corpus_tokens_estimate']:,} tokens "
        f"(actual / estimate = {s['tokens_vs_estimate']}).",
    ]
    return "\n".join(lines) + "\n"


def _shards(
    storage: Storage, cfg: ShardsConfig, tok_cfg: TokenizerConfig, corpus: Manifest, tokenizer: Manifest
) -> Manifest:
    m = tokenize_corpus(storage, cfg, tok_cfg, corpus, tokenizer)
    create_markdown_artifact(
        key="tokenizer-report",
        markdown=render_report(tokenizer, m),
        description="Vocabulary, compression on English and Spanish, token shards",
    )
    create_table_artifact(
        key="token-shards", table=m.stats["shards"], description="Token shards and their counts"
    )
    return m


tokenizer_task = stage_task(train_tokenizer, "tokenizer")
shards_task = stage_task(_shards, "shards")
