"""Pretraining as a stage: write a training spec, launch `python -m models.train` as its own process.

DDP never starts inside the Prefect worker: the launched command (tasks/launcher.py) is the one torchrun,
Slurm's srun or a Kubernetes job would start on every node, and Lightning spawns the local ranks from it.
A killed run leaves its checkpoints; the rerun of the stage resumes from the last one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tasks.config import PretrainConfig
from tasks.errors import ForjaInputError
from tasks.launcher import CheckpointSync, cache_root, local_copy, run_training
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage

__all__ = ["STAGE", "CheckpointSync", "pretrain", "training_spec"]  # CheckpointSync: tasks.launcher's

STAGE = "pretrain"


def training_spec(
    cfg: PretrainConfig, tokenizer: Manifest, shards_dir: Path, tokenizer_dir: Path, out_dir: Path
) -> dict:
    from models.model import ModelConfig

    model = {**cfg.model, "vocab_size": tokenizer.stats["vocab_size"]}
    try:
        ModelConfig(**model)
    except (TypeError, ValueError) as e:
        raise ForjaInputError(f"pretrain.model: {e}") from None
    return {
        "shards_dir": str(shards_dir),
        "out_dir": str(out_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "model": model,
        **cfg.model_dump(exclude={"model", "launcher"}),
    }


def pretrain(storage: Storage, cfg: PretrainConfig, tokenizer: Manifest, shards: Manifest) -> Manifest:
    def build(out: StageDir) -> dict:
        cache = cache_root()
        shards_dir = local_copy(storage, shards.stage, shards.key, cache)
        tokenizer_dir = local_copy(storage, tokenizer.stage, tokenizer.key, cache, "hf")
        run_dir = run_training(
            storage,
            out,
            "models.train",
            lambda run_dir: training_spec(cfg, tokenizer, shards_dir, tokenizer_dir, run_dir),
            cfg.launcher,
            cfg.num_nodes,
            cfg.devices,
        )
        metrics = json.loads((run_dir / "metrics.json").read_text())
        samples = json.loads((run_dir / "samples.json").read_text())
        return {
            **{k: v for k, v in metrics.items() if k != "history"},
            "evaluations": [r for r in metrics["history"] if "val/loss" in r],
            "samples": samples[-1]["samples"] if samples else {},
            "export": out.url("export"),
        }

    inputs = {"tokenizer": tokenizer, "shards": shards}
    version = code_version(sys.modules[__name__], *_model_modules())
    return run_stage(
        storage, STAGE, cfg.model_dump(mode="json", exclude={"launcher"}), inputs, version, build
    )


def _model_modules() -> tuple[str, ...]:
    # by name: hashed from their files, not imported (Lightning takes seconds to import)
    return "models.model", "models.data", "models.lightning", "models.train"
