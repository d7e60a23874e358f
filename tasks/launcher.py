"""Run a training entry point (`python -m models.<entry> spec.json`) as its own process, for any stage.

DDP never starts inside the Prefect worker: the launched command is the one torchrun, Slurm's srun or a
Kubernetes job would start on every node, and Lightning spawns the local ranks from it. The run works in
a local folder (the stage folder itself on local storage, a cache folder otherwise); on object storage its
finished checkpoints are mirrored while it trains, so a lost machine's run resumes elsewhere, and the
whole folder is uploaded at the end. A failed run raises; its checkpoints stay for the rerun.
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
from tasks.manifest import StageDir
from tasks.storage import Storage

LAUNCH_FILE = "launch.json"  # written last: a node that finds it finds spec.json too
PROGRESS_FILE = "progress.json"  # written by the trainers' ProgressFile callback
REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("forja")


def cache_root() -> Path:
    return Path(os.environ.get("FORJA_CACHE", Path.home() / ".cache" / "forja"))


def local_copy(storage: Storage, stage: str, key: str, cache: Path, sub: str = "") -> Path:
    """A local folder with a stage's files (or its subfolder `sub`): the folder itself on local storage,
    a synced copy otherwise."""
    parts = [p for p in (stage, key, sub) if p]
    if storage.is_local:
        return Path(storage.path(*parts))
    target = cache.joinpath(*parts)
    if not (target / ".complete").exists():
        storage.fs.get(storage.path(*parts) + "/", str(target) + "/", recursive=True)
        (target / ".complete").touch()
    return target


def launch_command(
    module: str, spec_path: Path, launcher: str = "lightning", num_nodes: int = 1, devices: int = 1
) -> list[str]:
    """The command for this machine. With torchrun, multi-node settings come from the environment
    (MASTER_ADDR, MASTER_PORT, NODE_RANK), as a cluster launcher sets them."""
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={num_nodes}",
            f"--nproc-per-node={devices}",
            f"--node-rank={os.environ.get('NODE_RANK', '0')}",
            f"--master-addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
            f"--master-port={os.environ.get('MASTER_PORT', '29500')}",
            "-m",
            module,
            str(spec_path),
        ]
    return [sys.executable, "-m", module, str(spec_path)]


class CheckpointSync:
    """Mirror the run's finished checkpoints to the storage root while training runs, so a run on a
    machine that is lost (preempted node, new worker) resumes from the last one, not from step 0.

    A checkpoint counts as finished once its size and mtime held still for one poll; ones Lightning
    deleted locally (older than the kept ones) are deleted remotely too."""

    def __init__(self, storage: Storage, stage: str, key: str, local: Path):
        self.storage, self.remote = storage, storage.path(stage, key, "checkpoints")
        self.stage, self.local = stage, local
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
                log.info("%s: fetching checkpoint %s", self.stage, name)
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
    command: list[str],
    run_dir: Path,
    stage: str = "train",
    on_tick: Callable[[], None] | None = None,
    every_s: float = 5.0,
) -> int:
    """Run the training command; report its progress (step, loss) while it runs and call `on_tick`."""
    # OpenMP threads that sleep instead of spinning while they wait: on a machine whose cores other
    # programs also use, spinning threads slowed small models' steps 20x (2.8 s against 0.13 s)
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1"}
    # the trainer's stdout goes to stderr: our own stdout may carry the stage's JSON manifest
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=sys.stderr)
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
            progress.emit(stage, "update", state)
            log.info(
                "%s: step %s/%s, loss %.4f",
                stage,
                state["step"],
                state.get("max_steps"),
                state.get("train/loss", float("nan")),
            )


def run_training(
    storage: Storage,
    out: StageDir,
    module: str,
    spec: Callable[[Path], dict],
    launcher: str = "lightning",
    num_nodes: int = 1,
    devices: int = 1,
) -> Path:
    """Write `spec(run_dir)` to `run_dir/spec.json`, run `python -m <module>` on it and return the run
    folder once training succeeded (its files are in the stage folder by then, on any storage)."""
    run_dir = Path(out.path()) if storage.is_local else cache_root() / out.stage / out.key
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec(run_dir), indent=2))
    if num_nodes > 1:  # how nodes 1..N-1 of a Kubernetes job start the same training (tasks/node.py)
        launch = {"module": module, "launcher": launcher, "num_nodes": num_nodes, "devices": devices}
        (run_dir / LAUNCH_FILE).write_text(json.dumps(launch))
    sync = None
    if not storage.is_local:
        sync = CheckpointSync(storage, out.stage, out.key, run_dir / "checkpoints")
        sync.restore()
    command = launch_command(module, spec_path, launcher, num_nodes, devices)
    code = run_watched(command, run_dir, out.stage, sync)
    if code != 0:
        raise RuntimeError(f"training exited with code {code}; logs in {run_dir / 'logs'}")
    if not storage.is_local:
        storage.fs.put(str(run_dir) + "/", storage.path(out.stage, out.key) + "/", recursive=True)
    return run_dir
