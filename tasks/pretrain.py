"""Pretraining as a stage: write a training spec, launch `python -m models.train` as its own process.

DDP never starts inside the Prefect worker: the launched command is the one torchrun, Slurm's srun or a
Kubernetes job would start on every node, and Lightning spawns the local ranks from it. A killed run
leaves its checkpoints; the rerun of the stage resumes from the last one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tasks import progress
from tasks.config import PretrainConfig
from tasks.errors import ForjaInputError
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage

STAGE = "pretrain"
PROGRESS_FILE = "progress.json"  # written by models.train's ProgressFile callback
log = logging.getLogger("forja")


def local_copy(storage: Storage, stage: str, key: str, cache: Path) -> Path:
    """A local folder with a stage's files: the folder itself on local storage, a synced copy otherwise."""
    if storage.is_local:
        return Path(storage.path(stage, key))
    target = cache / stage / key
    if not (target / ".complete").exists():
        storage.fs.get(storage.path(stage, key) + "/", str(target) + "/", recursive=True)
        (target / ".complete").touch()
    return target


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


def launch_command(cfg: PretrainConfig, spec_path: Path) -> list[str]:
    """The command for this machine. With torchrun, multi-node settings come from the environment
    (MASTER_ADDR, MASTER_PORT, NODE_RANK), as a cluster launcher sets them."""
    if cfg.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={cfg.num_nodes}",
            f"--nproc-per-node={cfg.devices}",
            f"--node-rank={os.environ.get('NODE_RANK', '0')}",
            f"--master-addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
            f"--master-port={os.environ.get('MASTER_PORT', '29500')}",
            "-m",
            "models.train",
            str(spec_path),
        ]
    return [sys.executable, "-m", "models.train", str(spec_path)]


class CheckpointSync:
    """Mirror the run's finished checkpoints to the storage root while training runs, so a run on a
    machine that is lost (preempted node, new worker) resumes from the last one, not from step 0.

    A checkpoint counts as finished once its size and mtime held still for one poll; ones Lightning
    deleted locally (older than the kept ones) are deleted remotely too."""

    def __init__(self, storage: Storage, stage: str, key: str, local: Path):
        self.storage, self.remote = storage, storage.path(stage, key, "checkpoints")
        self.local = local
        self.seen: dict[str, tuple[int, float]] = {}
        self.uploaded: dict[str, tuple[int, float]] = {}

    def restore(self) -> None:
        """Fetch the checkpoints an earlier, interrupted run left in the storage root."""
        fs = self.storage.fs
        if not fs.exists(self.remote):
            return
        self.local.mkdir(parents=True, exist_ok=True)
        for remote in fs.ls(self.remote, detail=False):
            name = remote.rstrip("/").rsplit("/", 1)[-1]
            if name.endswith(".ckpt") and not (self.local / name).exists():
                log.info("pretrain: fetching checkpoint %s", name)
                fs.get(remote, str(self.local / f".tmp-{name}"))
                (self.local / f".tmp-{name}").replace(self.local / name)

    def __call__(self) -> None:
        now = {p.name: (p.stat().st_size, p.stat().st_mtime) for p in self.local.glob("*.ckpt")}
        for name, state in now.items():
            if self.seen.get(name) == state and self.uploaded.get(name) != state:
                self.storage.fs.put(str(self.local / name), f"{self.remote}/{name}")
                self.uploaded[name] = state
        for name in set(self.uploaded) - set(now):
            self.storage.fs.rm(f"{self.remote}/{name}")
            del self.uploaded[name]
        self.seen = now


def run_watched(
    command: list[str], run_dir: Path, on_tick: Callable[[], None] | None = None, every_s: float = 5.0
) -> int:
    """Run the training command; report its progress (step, loss) while it runs and call `on_tick`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the trainer's stdout goes to stderr: our own stdout may carry the stage's JSON manifest
    proc = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parents[1], stdout=sys.stderr)
    last_step = -1
    while True:
        try:
            code = proc.wait(timeout=every_s)
        except subprocess.TimeoutExpired:
            code = None
        if on_tick:
            on_tick()
        if code is not None:
            return code
        try:
            state = json.loads((run_dir / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            continue
        if state.get("step", -1) != last_step:
            last_step = state["step"]
            progress.emit(STAGE, "update", state)
            log.info(
                "pretrain: step %s/%s, loss %.4f",
                state["step"],
                state.get("max_steps"),
                state.get("train/loss", float("nan")),
            )


def pretrain(storage: Storage, cfg: PretrainConfig, tokenizer: Manifest, shards: Manifest) -> Manifest:
    cache = Path(os.environ.get("FORJA_CACHE", Path.home() / ".cache" / "forja"))

    def build(out: StageDir) -> dict:
        shards_dir = local_copy(storage, shards.stage, shards.key, cache)
        tokenizer_dir = local_copy(storage, tokenizer.stage, tokenizer.key, cache) / "hf"
        run_dir = Path(out.path()) if storage.is_local else cache / STAGE / out.key
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = training_spec(cfg, tokenizer, shards_dir, tokenizer_dir, run_dir)
        spec_path = run_dir / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        sync = None
        if not storage.is_local:
            sync = CheckpointSync(storage, STAGE, out.key, run_dir / "checkpoints")
            sync.restore()
        code = run_watched(launch_command(cfg, spec_path), run_dir, sync)
        if code != 0:
            raise RuntimeError(f"training exited with code {code}; logs in {run_dir / 'logs'}")
        if not storage.is_local:
            storage.fs.put(str(run_dir) + "/", storage.path(STAGE, out.key) + "/", recursive=True)
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
