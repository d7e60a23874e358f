"""The tokenizer flow: train SentencePiece on the corpus, then tokenize the corpus into shards."""

from __future__ import annotations

from prefect import flow

from tasks.config import ShardsConfig, TokenizerConfig
from tasks.corpus import versions
from tasks.errors import ForjaInputError
from tasks.manifest import Manifest, read_manifest
from tasks.storage import Storage
from tasks.tokenizer.steps import shards_task, tokenizer_task


def latest_corpus(storage: Storage) -> Manifest:
    current = versions.latest(storage)
    if current is None or (corpus := read_manifest(storage, "stats", current.corpus)) is None:
        raise ForjaInputError(f"no corpus in {storage.root}; run `forja corpus` first (or pass --input)")
    return corpus


@flow(name="tokenizer", log_prints=True)
def tokenizer_flow(
    tokenizer: TokenizerConfig | None = None,
    shards: ShardsConfig | None = None,
    storage: str = "./forja-store",
    corpus: Manifest | None = None,
) -> dict[str, Manifest]:
    """Tokenizer + shards of `corpus` (default: the latest corpus version in `storage`)."""
    tokenizer, shards = tokenizer or TokenizerConfig(), shards or ShardsConfig()
    store = Storage(storage)
    corpus = corpus or latest_corpus(store)
    trained = tokenizer_task(store, tokenizer, corpus)
    tokens = shards_task(store, shards, tokenizer, corpus, trained)
    return {"tokenizer": trained, "shards": tokens}
