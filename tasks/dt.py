"""Running datatrove pipelines, the engine of every data stage: local processes here, Slurm or Ray later."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import datatrove.executor.base as dt_base
import datatrove.utils.logging as dt_logging
import multiprocess
from datatrove.executor import LocalPipelineExecutor
from datatrove.io import DataFolder
from datatrove.utils.stats import PipelineStats
from loguru import logger

VERBOSE = "FORJA_VERBOSE"  # set to 1 to see datatrove's per-shard logs on the console

# Modules whose steps run in the worker processes. The pool's fork server imports them once, when the first
# pool starts; every later pool in the process forks ready workers (~0.1 s) instead of importing them again in
# each one (~0.5-1 s of serial start-up, a large share of a short stage).
WORKER_MODULES = [
    "tasks.dt",
    "tasks.corpus.collect",
    "tasks.corpus.clean",
    "tasks.corpus.dedup",
    "tasks.corpus.detox",
    "tasks.tokenizer.shards",
]


def _quiet_logging() -> None:
    """datatrove logs every shard at INFO to the console; keep those in the stage's log files and show
    only warnings, so the command's own progress stays readable."""
    if os.environ.get(VERBOSE) == "1" or getattr(dt_logging, "_forja_quiet", False):
        return

    def default_logger() -> None:
        logger.remove()
        logger.add(sys.stderr, level="WARNING")

    original = dt_logging.add_task_logger
    dt_logging.setup_default_logger = default_logger
    # local_rank > 0 is datatrove's own switch for "console at ERROR level, everything in the file"
    dt_base.add_task_logger = lambda logging_dir, rank, local_rank=0, node_rank=-1: original(
        logging_dir, rank, 1, node_rank
    )
    dt_logging._forja_quiet = True
    default_logger()


class Executor(LocalPipelineExecutor):
    def _run_for_rank(self, rank: int, local_rank: int = 0):
        _quiet_logging()  # in worker processes too
        return super()._run_for_rank(rank, local_rank)


def run_pipeline(pipeline: list, logging_dir: DataFolder, tasks: int = 1, workers: int = 1) -> PipelineStats:
    """Run `pipeline` as `tasks` shards on `workers` processes; return the stats of all shards.

    Shards completed by an earlier, interrupted run are skipped (their completion marker is written
    after their output is closed), so a rerun resumes instead of starting over.
    """
    _quiet_logging()
    if workers > 1 and tasks > 1:
        multiprocess.set_forkserver_preload(WORKER_MODULES)  # no effect once the fork server runs
    Executor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir).run()
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
            return {k: _total(v) for k, v in block.stats.items()}
    return {}


def written(stats: PipelineStats) -> int:
    """Documents that reached the pipeline's last step (its writer)."""
    last = stats.stats[-1] if stats.stats else None
    total = last.stats.get("total") if last else None
    return int(_total(total)) if total is not None else 0


def _total(value: Any) -> Any:
    """A counter's total. Stats read from a single shard's file stay raw (a number, or a dict for a
    metric) until they are added to another shard's."""
    if hasattr(value, "total"):
        return value.total
    if isinstance(value, dict) and "total" in value:
        return value["total"]
    return value
