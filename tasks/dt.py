"""Running datatrove pipelines, the engine of every data stage: local processes here, Slurm or Ray later."""

from __future__ import annotations

import json
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.io import DataFolder
from datatrove.utils.stats import PipelineStats


def run_pipeline(pipeline: list, logging_dir: DataFolder, tasks: int = 1, workers: int = 1) -> PipelineStats:
    """Run `pipeline` as `tasks` shards on `workers` processes; return the stats of all shards.

    Shards completed by an earlier, interrupted run are skipped (their completion marker is written
    after their output is closed), so a rerun resumes instead of starting over.
    """
    LocalPipelineExecutor(
        pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir
    ).run()
    return merged_stats(logging_dir)


def merged_stats(logging_dir: DataFolder) -> PipelineStats:
    """Stats of every shard, including those completed by an earlier run."""
    total = PipelineStats()
    for name in logging_dir.list_files("stats"):
        with logging_dir.open(name, "rt") as f:
            total = total + PipelineStats.from_json(json.load(f))
    return total


def counters(stats: PipelineStats, step_name: str) -> dict[str, Any]:
    """The plain counters of one step (`total`, `dropped`, `dropped_<reason>`, ...) as numbers."""
    for block in stats.stats:
        if block.name == step_name or block.name.endswith(f": {step_name}"):
            return {k: (v.total if hasattr(v, "total") else v) for k, v in block.stats.items()}
    return {}


def written(stats: PipelineStats) -> int:
    """Documents that reached the pipeline's last step (its writer)."""
    last = stats.stats[-1] if stats.stats else None
    total = last.stats.get("total") if last else None
    return int(total.total) if total is not None else 0
