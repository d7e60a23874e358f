"""The training entry point: `python -m models.train spec.json`.

The same command runs everywhere: one process, several local processes (Lightning re-executes it per
rank), or on every node of a cluster, where torchrun/TorchElastic, Slurm or Kubeflow set the rank and
master address. The spec is a plain JSON file; outputs go to `out_dir` (a local folder):
`checkpoints/`, `logs/` (CSV + TensorBoard), `metrics.json`, `samples.json`, `loss.png`, `export/`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from models.data import bytes_per_token
from models.lightning import LitDecoder, Throughput, TokenData


@dataclass(kw_only=True)
class RunSpec:
    """What the spec of every training process holds: where it writes, how long it trains, where it runs."""

    out_dir: str
    tokenizer_dir: str | None = None  # a folder with tokenizer.model (and the transformers files)
    optim: dict = field(default_factory=dict)  # models.lightning.OptimConfig fields
    micro_batch: int = 8
    accumulate: int = 1
    max_steps: int = 200
    val_every: int = 50
    ckpt_every: int = 100
    seed: int = 1234
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # bf16-mixed on a GPU that has it, else 32-true
    grad_clip: float = 1.0
    samples: dict = field(default_factory=dict)
    export: bool = True

    @classmethod
    def load(cls, path: str | Path):
        return cls(**json.loads(Path(path).read_text()))

    @property
    def world(self) -> int:
        return self.num_nodes * (self.devices if isinstance(self.devices, int) else 1)


@dataclass(kw_only=True)
class TrainSpec(RunSpec):
    """Pretraining: a decoder of `model` (models.model.ModelConfig fields) on the token shards."""

    shards_dir: str
    model: dict
    val_windows: int = 200
    compile: bool = False
    peak_flops: float | None = None


class ProgressFile(L.Callback):
    """`progress.json` in the run folder (step, loss, tokens/s), for whoever watches the run from outside."""

    def __init__(self, path: Path, every: int = 10):
        self.path, self.every = path, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank != 0 or trainer.global_step % self.every:
            return
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))
        }
        state = {"step": trainer.global_step, "max_steps": trainer.max_steps, **metrics}
        tmp = self.path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path)


class ThrottledBar(RichProgressBar):
    """Lightning's Rich bar, updated at most every 0.1 s: collecting the bar's metrics on every step costs a
    small model about half a percent of its speed, for redraws faster than anyone reads."""

    def __init__(self, interval: float = 0.1):
        super().__init__()
        self.interval, self._shown = interval, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.monotonic()
        if now - self._shown >= self.interval:
            self._shown = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar() -> list[L.Callback]:
    """The training bar, unless FORJA_PROGRESS=0 (`forja` draws its own from progress.json). Pass the list
    to the Trainer's callbacks and `enable_progress_bar=bool(it)`."""
    return [ThrottledBar()] if os.environ.get("FORJA_PROGRESS", "1") == "1" else []


def _precision(spec: RunSpec) -> str:
    if spec.precision != "auto":
        return spec.precision
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def make_trainer(
    spec: RunSpec, callbacks: list[L.Callback], updates_per_batch: int = 1, **overrides
) -> L.Trainer:
    """The Trainer of every run: step-indexed data (each rank takes its slice itself), a checkpoint every
    `ckpt_every` steps plus the last one, progress.json, the progress bar and a CSV log. `updates_per_batch`:
    optimizer steps per batch (manual optimisation), which Lightning's step counters count."""
    out, mu = Path(spec.out_dir), updates_per_batch
    bar = progress_bar()
    options = dict(
        accelerator=spec.accelerator,
        devices=spec.devices,
        num_nodes=spec.num_nodes,
        strategy=spec.strategy,
        precision=_precision(spec),
        max_steps=spec.max_steps * mu,
        accumulate_grad_batches=spec.accumulate,
        gradient_clip_val=spec.grad_clip or None,
        val_check_interval=spec.val_every * spec.accumulate,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        deterministic=True,
        logger=CSVLogger(out / "logs", name="", version=""),
        callbacks=[
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                every_n_train_steps=spec.ckpt_every * mu,
                save_last=True,
                save_top_k=1,
                monitor="step",
                mode="max",
                filename="step{step:06d}",
                auto_insert_metric_name=False,
            ),
            *callbacks,
            ProgressFile(out / "progress.json", every=max(1, min(10, spec.max_steps // 10)) * mu),
            *bar,
        ],
        enable_progress_bar=bool(bar),
        enable_model_summary=False,
        log_every_n_steps=min(10, spec.max_steps),
    )
    return L.Trainer(**{**options, **overrides})


def _strategy(spec: TrainSpec):
    if spec.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        if spec.accelerator == "cpu" or not torch.cuda.is_available():
            # Lightning's FSDP strategy runs on CUDA devices only; say so before it fails deep inside
            raise SystemExit(
                "pretrain.strategy=fsdp needs CUDA GPUs and this machine has none; "
                "use pretrain.strategy=ddp (or auto) on CPU"
            )

        from models.model import Block

        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")
    return spec.strategy


def build(spec: TrainSpec) -> tuple[L.Trainer, LitDecoder, TokenData]:
    L.seed_everything(spec.seed, workers=True, verbose=False)
    out = Path(spec.out_dir)
    tokenizer_model = None
    if spec.tokenizer_dir and (Path(spec.tokenizer_dir) / "tokenizer.model").exists():
        tokenizer_model = (Path(spec.tokenizer_dir) / "tokenizer.model").read_bytes()
    optim = {**spec.optim, "max_steps": spec.max_steps}
    module = LitDecoder(spec.model, optim, bytes_per_token(spec.shards_dir), spec.samples, tokenizer_model)
    if spec.compile:
        module.model = torch.compile(module.model)
    data = TokenData(
        spec.shards_dir,
        module.model_cfg.context,
        spec.micro_batch,
        spec.accumulate,
        spec.seed,
        spec.val_windows,
    )
    tokens_per_step = spec.micro_batch * spec.accumulate * spec.world * module.model_cfg.context
    out = Path(spec.out_dir)
    throughput = Throughput(
        tokens_per_step, module.model.flops_per_token(module.model_cfg.context), spec.peak_flops
    )
    trainer = make_trainer(
        spec,
        [throughput],
        strategy=_strategy(spec),
        logger=[
            CSVLogger(out / "logs", name="", version=""),
            TensorBoardLogger(out / "logs", name="", version="tb"),
        ],
    )
    return trainer, module, data


def train(spec: TrainSpec) -> dict:
    """Fit (resuming from the last checkpoint if there is one), then write metrics, samples, plots, export."""
    trainer, module, data = build(spec)
    resume = resume_checkpoint(Path(spec.out_dir) / "checkpoints")
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    # a final validation at the last step, whatever val_every was
    final = trainer.validate(module, datamodule=data, verbose=False)[0]
    _leave_process_group()
    if trainer.global_rank != 0:
        return {}
    return write_outputs(spec, module, final, world_size=trainer.world_size)


def _leave_process_group() -> None:
    """Tear the process group down while every rank is still alive: left to interpreter exit, gloo's
    threads can outlive it and abort a rank that finished cleanly."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resume_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that loads: a run killed while writing one falls back to the one before."""
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # noqa: BLE001 - a truncated file raises whatever the unpickler meets
            continue
        return path
    return None


def write_outputs(spec: TrainSpec, module: LitDecoder, final: dict, world_size: int = 1) -> dict:
    out = Path(spec.out_dir)
    history = read_history(out / "logs" / "metrics.csv")
    metrics = {
        "steps": spec.max_steps,
        "val_loss": final.get("val/loss"),
        "val_bpb": final.get("val/bpb"),
        "train_loss": next(
            (r["train/loss"] for r in reversed(history) if r.get("train/loss") is not None), None
        ),
        "tokens_per_s": _median([r["perf/tokens_per_s"] for r in history if r.get("perf/tokens_per_s")]),
        "mfu": _median([r["perf/mfu"] for r in history if r.get("perf/mfu")]),
        "params": module.model.num_params(),
        "world_size": world_size,
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "samples.json").write_text(json.dumps(module.samples, indent=2, ensure_ascii=False))
    plot_losses(history, out / "loss.png")
    if spec.export:
        from models.export import export_hf

        export_hf(
            module.model,
            out / "export",
            spec.tokenizer_dir,
            extra={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3},
        )
    return metrics


def read_history(path: Path) -> list[dict]:
    """Lightning's CSV log as rows of floats (empty cells dropped)."""
    import csv

    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def _median(values: list[float]) -> float | None:
    values = sorted(values[len(values) // 10 :])  # the first steps include start-up: leave them out
    return values[len(values) // 2] if values else None


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["train/loss"]) for r in history if "train/loss" in r]
    val = [(r["step"], r["val/loss"]) for r in history if "val/loss" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _quiet() -> None:
    """Keep the console for progress and warnings that matter (FORJA_VERBOSE=1 shows everything)."""
    if os.environ.get("FORJA_VERBOSE") == "1":
        return
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def run_cli(doc: str, what: str, load, train_fn, argv: list[str] | None = None) -> None:
    """A training process's entry point (`python -m models.<module> spec.json`, as tasks/launcher.py starts
    it): train on the spec, print the metrics (less the history) as one JSON line."""
    _quiet()
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("spec", help=f"{what} spec (JSON)")
    args = parser.parse_args(argv)
    metrics = train_fn(load(args.spec))
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))


def main(argv: list[str] | None = None) -> None:
    run_cli(__doc__, "training", TrainSpec.load, train, argv)


if __name__ == "__main__":
    main()
