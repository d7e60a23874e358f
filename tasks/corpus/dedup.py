"""Dedup: exact (content hash) then near-duplicate (MinHash LSH) removal with datatrove's stages.

An index of every kept signature is written next to the shards. A later refresh starts from a copy of
the previous version's index, so new documents that duplicate anything already in the corpus are dropped
and the older version stays untouched (a killed refresh cannot corrupt it).
"""

from __future__ import annotations

import sys

import numpy as np
import xxhash
from datatrove.data import Document
from datatrove.pipeline.dedup import (
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    get_sig_dtype,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import simplify_text
from datatrove.utils.typeshelper import ExtensionHelperSD

from tasks.config import CorpusConfig, DedupConfig
from tasks.corpus.clean import removed_samples
from tasks.corpus.shards import shard_reader, shard_writer
from tasks.dt import counters, run_pipeline, written
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage

STAGE = "dedup"
_NGRAM_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: n-gram hash = polynomial in word hashes


def exact_content(doc: Document) -> str:
    """What counts as the same document: the same words, whatever the spacing."""
    return " ".join(doc.text.split())


class FastMinhashSignature(MinhashDedupSignature):
    """MinHash signatures without spaCy.

    datatrove's `simplify_text` already lowercases, strips punctuation and folds whitespace, so splitting on
    spaces yields the same words as a word tokenizer. Words are hashed once and n-gram hashes are combined
    with numpy instead of joining strings, which removes most of the per-document Python work.
    """

    name = "🎯 MinHash stage 1 (fast)"

    def __init__(self, output_folder, config: MinhashConfig):
        super().__init__(output_folder, config)
        self.word_tokenizer = None  # not used; spares loading spaCy in every worker

    def get_shingles(self, text: str) -> np.ndarray:
        words = simplify_text(text, self.config.norm_config).split()
        n = self.config.n_grams
        if len(words) < n:
            return np.empty((0, 1), dtype=np.uint64)
        h = np.fromiter((xxhash.xxh3_64_intdigest(w) for w in words), dtype=np.uint64, count=len(words))
        shingles = h[: len(h) - n + 1].copy()
        with np.errstate(over="ignore"):  # multiplication modulo 2**64 is the point
            for j in range(1, n):
                shingles = shingles * _NGRAM_MIX + h[j : len(h) - n + 1 + j]
        return np.unique(shingles).reshape((-1, 1))


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    return MinhashConfig(
        n_grams=cfg.n_grams,
        num_buckets=cfg.num_buckets,
        hashes_per_bucket=cfg.hashes_per_bucket,
        seed=cfg.seed,
        hash_config=HashConfig(precision=64),
    )


def signature_step(cfg: DedupConfig, folder):
    if cfg.word_tokenizer == "fast":
        return FastMinhashSignature(folder, minhash_config(cfg))
    return MinhashDedupSignature(folder, minhash_config(cfg))


EXACT = ExactDedupConfig(content_getter=exact_content, only_dedup_in_index=False)


def write_exact_index(sigs_folder, index_folder, name: str) -> None:
    """All content hashes of this run, sorted and unique, as one index file for later runs."""
    dtype = get_sig_dtype(EXACT.hash_config)
    hashes = []
    for name in sigs_folder.list_files(glob_pattern=f"*/*{ExtensionHelperSD.stage_1_signature}"):
        with sigs_folder.open(name, "rb") as f:
            hashes.append(np.frombuffer(f.read(), dtype=dtype)["hash"])
    merged = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)
    with index_folder.open(f"{name}{ExtensionHelperSD.index}", "wb") as f:
        f.write(merged.astype("<u8").tobytes())


def copy_index(storage: Storage, previous: Manifest, out: StageDir) -> None:
    """Start from the previous version's index (a copy: that version stays immutable)."""
    for entry in previous.files:
        if not entry.path.startswith("index/"):
            continue
        target = out.path(entry.path)
        if storage.fs.exists(target) and storage.fs.size(target) == entry.bytes:
            continue  # copied before an interruption
        storage.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        storage.fs.copy(storage.path(previous.stage, previous.key, entry.path), target)


def dedup(
    storage: Storage, cfg: CorpusConfig, cleaned: Manifest, previous: Manifest | None = None
) -> Manifest:
    """Drop exact and near duplicates of `cleaned`, also against `previous` (an earlier dedup) if given."""
    d = cfg.dedup
    tasks, workers = cfg.tasks, cfg.workers

    def build(out: StageDir) -> dict:
        source = storage.datafolder(cleaned.stage, cleaned.key, "shards")
        if previous is not None:
            copy_index(storage, previous, out)
        exact_filter, near_filter = [], []
        if d.exact:
            sigs, dups = out.work("exact", "sigs"), out.work("exact", "dups")
            run_pipeline(
                [shard_reader(source), ExactDedupSignature(sigs, EXACT)],
                out.work("logs", "exact1"),
                tasks,
                workers,
            )
            run_pipeline(
                [ExactFindDedups(sigs, dups, EXACT, index_folder=out.folder("index", "exact"))],
                out.work("logs", "exact2"),
                1,
                1,
            )
            exact_filter = [
                ExactDedupFilter(dups, EXACT, exclusion_writer=shard_writer(out.folder("removed", "exact")))
            ]
        if d.near:
            mh = minhash_config(d)
            msigs, buckets, clusters = (out.work("minhash", x) for x in ("sigs", "buckets", "clusters"))
            # Signatures index the documents that survive exact dedup, as the final pass will see them.
            unique = [ExactDedupFilter(dups, EXACT)] if d.exact else []
            run_pipeline(
                [shard_reader(source), *unique, signature_step(d, msigs)],
                out.work("logs", "minhash1"),
                tasks,
                workers,
            )
            run_pipeline(
                [
                    MinhashDedupBuckets(
                        msigs,
                        buckets,
                        index_folder=out.folder("index", "minhash"),
                        config=mh,
                        only_dedup_in_index=False,
                        create_index_name=out.key,
                    )
                ],
                out.work("logs", "minhash2"),
                d.num_buckets,
                workers,
            )
            run_pipeline(
                [MinhashDedupCluster(buckets, clusters, config=mh)], out.work("logs", "minhash3"), 1, 1
            )
            near_filter = [
                MinhashDedupFilter(clusters, exclusion_writer=shard_writer(out.folder("removed", "near")))
            ]
        final = run_pipeline(
            [shard_reader(source), *exact_filter, *near_filter, shard_writer(out.folder("shards"))],
            out.work("logs", "filter"),
            tasks,
            workers,
        )
        if d.exact:  # last, so that a resumed run never reads its own index as an older corpus
            write_exact_index(sigs, out.folder("index", "exact"), out.key)
        removed = {"exact": ExactDedupFilter.name, "near": MinhashDedupFilter.name}
        kinds = [k for k in removed if getattr(d, k)]
        return {
            "documents_in": cleaned.stats.get("documents", 0),
            "documents": written(final),
            **{f"{k}_removed": int(counters(final, removed[k]).get("dropped", 0)) for k in kinds},
            "samples": {k: removed_samples(out, k, cfg.clean.samples_per_filter) for k in kinds},
        }

    inputs = {"cleaned": cleaned, **({"previous": previous} if previous is not None else {})}
    key_config = {"dedup": d.model_dump(mode="json"), "tasks": tasks}
    return run_stage(storage, STAGE, key_config, inputs, code_version(sys.modules[__name__]), build)
