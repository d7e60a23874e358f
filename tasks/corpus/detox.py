"""Detox: drop documents whose toxicity score reaches the threshold; keep what was removed, with scores."""

from __future__ import annotations

import sys

from tasks.config import CorpusConfig
from tasks.corpus import toxicity
from tasks.corpus.clean import removed_samples
from tasks.corpus.shards import shard_reader, shard_writer
from tasks.corpus.toxicity import build_toxicity_filter
from tasks.dt import counters, run_pipeline, written
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage

STAGE = "detox"


def detox(storage: Storage, cfg: CorpusConfig, deduped: Manifest) -> Manifest:
    def build(out: StageDir) -> dict:
        source = storage.datafolder(deduped.stage, deduped.key, "shards")
        if not cfg.detox.enabled:
            stats = run_pipeline(
                [shard_reader(source), shard_writer(out.folder("shards"))],
                out.work("logs"),
                cfg.tasks,
                cfg.workers,
            )
            return {
                "documents_in": deduped.stats.get("documents", 0),
                "documents": written(stats),
                "removed": 0,
            }
        step = build_toxicity_filter(
            cfg.detox, exclusion_writer=shard_writer(out.folder("removed", "toxicity"))
        )
        stats = run_pipeline(
            [shard_reader(source), step, shard_writer(out.folder("shards"))],
            out.work("logs"),
            cfg.tasks,
            cfg.workers,
        )
        c = counters(stats, step.name)
        samples = removed_samples(out, "toxicity", cfg.clean.samples_per_filter)
        for s in samples:  # no need to show offensive text in reports: ids and scores say enough
            s.pop("text", None)
        return {
            "documents_in": deduped.stats.get("documents", 0),
            "documents": written(stats),
            "removed": int(c.get("dropped", 0)),
            "reasons": {k[len("dropped_") :]: int(v) for k, v in c.items() if k.startswith("dropped_")},
            "samples": samples,
        }

    key_config = {"detox": cfg.detox.model_dump(mode="json"), "tasks": cfg.tasks}
    version = code_version(sys.modules[__name__], toxicity)
    return run_stage(storage, STAGE, key_config, {"deduped": deduped}, version, build)
