"""Tokenize the corpus into train/val token shards: flat, memory-mappable arrays of token ids.

Each document is encoded and followed by `</s>`; the split is a hash of the document id (the same one the
tokenizer held out). uint16 when the vocabulary fits, else uint32. One file per split and process,
written as a stream (memory stays flat in corpus size), and an `index.json` with the token counts.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import sentencepiece as spm
from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolder
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from tasks.config import ShardsConfig, TokenizerConfig
from tasks.corpus import shards as corpus_shards
from tasks.corpus.shards import shard_reader
from tasks.dt import run_pipeline
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage
from tasks.tokenizer.train import EOS, corpus_folders, is_val
from tasks.tokenizer.train import STAGE as TOKENIZER_STAGE

STAGE = "shards"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class TokenizeToShards(PipelineStep):
    type = "🔢 - TOKENIZER"
    name = "tokenize"

    def __init__(self, model: bytes, output: DataFolder, val_fraction: float, batch_docs: int):
        super().__init__()
        self.model, self.output = model, output
        self.val_fraction, self.batch_docs = val_fraction, batch_docs

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        # One thread per process: parallelism comes from the processes (and machines), and SentencePiece's
        # default would start a thread per host core in every worker.
        sp = spm.SentencePieceProcessor(model_proto=self.model, num_threads=1)
        dtype, eos = token_dtype(sp.get_piece_size()), np.array([sp.piece_to_id(EOS)])
        counts = {split: {"documents": 0, "tokens": 0, "bytes": 0} for split in SPLITS}
        files = {split: self.output.open(f"{split}/{rank:05d}.bin", "wb") for split in SPLITS}
        try:
            for batch in batched(data, self.batch_docs):
                with self.track_time(unit="batch"):
                    encoded = sp.encode([doc.text for doc in batch], out_type="numpy")
                pieces: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
                for doc, ids in zip(batch, encoded, strict=True):
                    split = "val" if is_val(doc.id, self.val_fraction) else "train"
                    pieces[split] += [ids, eos]
                    c = counts[split]
                    c["documents"] += 1
                    c["tokens"] += len(ids) + 1
                    c["bytes"] += len(doc.text.encode("utf-8"))
                for split, arrays in pieces.items():
                    if arrays:
                        files[split].write(np.concatenate(arrays).astype(dtype).tobytes())
        finally:
            for f in files.values():
                f.close()
        for split, c in counts.items():
            for key, value in c.items():
                self.stat_update(f"{split}_{key}", value=value)
        with self.output.open(f"counts/{rank:05d}.json", "wt") as f:
            json.dump(counts, f)
        return
        yield  # a generator step that ends the pipeline


def load_shard(storage: Storage, shards: Manifest, path: str) -> np.ndarray:
    """A token shard as an array (memory-mapped when the storage root is a local folder)."""
    dtype = np.dtype(shards.stats["dtype"])
    if storage.fs.size(storage.path(STAGE, shards.key, path)) == 0:
        return np.empty(0, dtype=dtype)  # a rank that got no documents (mmap refuses empty files)
    if storage.is_local:
        return np.memmap(storage.path(STAGE, shards.key, path), dtype=dtype, mode="r")
    with storage.fs.open(storage.path(STAGE, shards.key, path), "rb") as f:
        return np.frombuffer(f.read(), dtype=dtype)


def tokenize_corpus(
    storage: Storage, cfg: ShardsConfig, tok_cfg: TokenizerConfig, corpus: Manifest, tokenizer: Manifest
) -> Manifest:
    def build(out: StageDir) -> dict:
        with storage.fs.open(storage.path(TOKENIZER_STAGE, tokenizer.key, "tokenizer.model"), "rb") as f:
            model = f.read()
        step = TokenizeToShards(model, out.folder(), tok_cfg.val_fraction, cfg.batch_docs)
        run_pipeline(
            [shard_reader(*corpus_folders(storage, corpus)), step], out.work("logs"), cfg.tasks, cfg.workers
        )
        shards = []
        for rank in range(cfg.tasks):
            rank_counts = json.loads(storage.read_text(STAGE, out.key, "counts", f"{rank:05d}.json"))
            shards += [
                {"path": f"{split}/{rank:05d}.bin", "split": split, **rank_counts[split]} for split in SPLITS
            ]
        vocab_size = tokenizer.stats["vocab_size"]
        totals = {
            split: {
                k: sum(s[k] for s in shards if s["split"] == split) for k in ("documents", "tokens", "bytes")
            }
            for split in SPLITS
        }
        tokens = sum(t["tokens"] for t in totals.values())
        index = {
            "dtype": token_dtype(vocab_size).name,
            "vocab_size": vocab_size,
            "eos_id": tokenizer.stats["special_tokens"][EOS],
            "shards": shards,
            "totals": totals,
        }
        storage.write_json_atomic(index, STAGE, out.key, "index.json")
        estimate = corpus.stats.get("tokens_estimate")
        return {
            **index,
            "tokens": tokens,
            "bytes_per_token": round(sum(t["bytes"] for t in totals.values()) / tokens, 3)
            if tokens
            else None,
            "corpus_tokens_estimate": estimate,
            "tokens_vs_estimate": round(tokens / estimate, 3) if estimate else None,
        }

    key_config = {
        "shards": cfg.model_dump(mode="json", exclude={"workers", "batch_docs"}),
        "val_fraction": tok_cfg.val_fraction,
    }
    inputs = {"corpus": corpus, "tokenizer": tokenizer}
    return run_stage(
        storage, STAGE, key_config, inputs, code_version(sys.modules[__name__], corpus_shards), build
    )
