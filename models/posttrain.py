"""What every post-training run shares (SFT now; preference tuning and RL on the same frame).

- `PostTrainSpec`: the JSON spec a stage writes and its training command reads.
- `PolicyModule`: a LightningModule around a peft-wrapped policy: AdamW over the adapter only, warmup +
  cosine, checkpoints that carry only the trainable weights (the frozen base is reloaded from its export),
  chat samples at each evaluation. Subclasses write `training_step` / `validation_step`.
- `run(spec, module, data)`: fit (resuming from the newest checkpoint), then, on rank 0, write the run's
  outputs: `adapter/` (peft format), `export/` (merged, transformers-loadable), `metrics.json`,
  `samples.json`, `loss.png`, `logs/metrics.csv`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

from models.chat import ChatTemplate, generate_replies
from models.lightning import OptimConfig
from models.lora import LoraSettings, save_adapter, trainable_parameters
from models.policy import export_policy, load_policy
from models.train import (
    RunSpec,
    _leave_process_group,
    make_trainer,
    plot_losses,
    read_history,
    resume_checkpoint,
)


@dataclass(kw_only=True)
class PostTrainSpec(RunSpec):
    base: str  # export folder (or .ckpt) of the model to tune
    data_dir: str
    adapter: str | None = None  # continue this saved adapter instead of starting a fresh one
    lora: dict = field(default_factory=dict)  # models.lora.LoraSettings fields


class PolicyModule(L.LightningModule):
    def __init__(
        self,
        base: str,
        lora: dict,
        optim: dict,
        adapter: str | None = None,
        samples: dict | None = None,
        tokenizer_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.optim = OptimConfig(**optim)
        self.policy = load_policy(base, adapter, trainable=True, lora=LoraSettings(**lora)).train()
        self.strict_loading = False  # checkpoints hold the trainable weights only
        self.sample_cfg = {"prompts": [], "max_new_tokens": 48, **(samples or {})}
        self.template = ChatTemplate.from_file(tokenizer_dir) if tokenizer_dir else None
        self.samples: list[dict] = []

    @property
    def decoder(self):
        return self.policy.get_base_model()

    def configure_optimizers(self):
        o = self.optim
        return o.lightning(self.decoder.param_groups(o.weight_decay, o.decay_embeddings))

    def generate_samples(self) -> dict[str, str]:
        prompts = self.sample_cfg["prompts"]
        if not prompts or self.template is None:
            return {}
        replies = generate_replies(
            self.policy,
            self.template,
            [[{"role": "user", "content": p}] for p in prompts],
            max_new_tokens=self.sample_cfg["max_new_tokens"],
        )
        return dict(zip(prompts, replies, strict=True))

    def on_validation_epoch_end(self):
        if self.global_rank == 0 and not self.trainer.sanity_checking and self.sample_cfg["prompts"]:
            self.samples.append({"step": self.global_step, "samples": self.generate_samples()})

    def on_save_checkpoint(self, checkpoint):
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "samples": self.samples}

    def on_load_checkpoint(self, checkpoint):
        if "rng" in checkpoint:
            torch.set_rng_state(checkpoint["rng"]["torch"])
            self.samples = checkpoint["rng"]["samples"]


class TokensPerSecond(L.Callback):
    """Tokens (padding included: that is what the accelerator computes) per second, per optimizer step."""

    def __init__(self, world: int):
        self.world, self.tokens, self._t0 = world, 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()
        self.tokens += batch[0].numel() * self.world

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        now = time.perf_counter()
        if now > self._t0:
            pl_module.log("perf/tokens_per_s", self.tokens / (now - self._t0), on_step=True, on_epoch=False)
        self.tokens, self._t0 = 0, now


def seed_everything(seed: int) -> None:
    """Call before building the module: the adapter's initialisation draws from the global generator."""
    L.seed_everything(seed, workers=True, verbose=False)


def run(spec: PostTrainSpec, module: PolicyModule, data: L.LightningDataModule, has_val: bool) -> dict:
    """Fit, resuming if a checkpoint exists; then the outputs (rank 0). Returns the metrics."""
    trainer = make_trainer(spec, [TokensPerSecond(spec.world)], limit_val_batches=None if has_val else 0)
    resume = resume_checkpoint(Path(spec.out_dir) / "checkpoints")
    start = {}
    if has_val and resume is None:  # the base's validation loss, for comparison
        start = trainer.validate(module, datamodule=data, verbose=False)[0]
    started = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    final = trainer.validate(module, datamodule=data, verbose=False)[0] if has_val else {}
    _leave_process_group()
    if trainer.global_rank != 0:
        return {}
    return write_outputs(spec, module, start, final, trainer.world_size, seconds)


def write_outputs(
    spec: PostTrainSpec, module: PolicyModule, start: dict, final: dict, world_size: int, seconds: float
) -> dict:
    out = Path(spec.out_dir)
    history = read_history(out / "logs" / "metrics.csv")
    trainable, total = trainable_parameters(module.policy)
    rates = sorted(r["perf/tokens_per_s"] for r in history if r.get("perf/tokens_per_s"))
    metrics = {
        "steps": spec.max_steps,
        "train_loss": next((r["train/loss"] for r in reversed(history) if "train/loss" in r), None),
        "val_loss_start": start.get("val/loss"),
        **{k.replace("/", "_"): v for k, v in final.items()},
        "trainable_params": trainable,
        "params": total,
        "tokens_per_s": rates[len(rates) // 2] if rates else None,
        "train_seconds": round(seconds, 2),
        "world_size": world_size,
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "samples.json").write_text(json.dumps(module.samples, indent=2, ensure_ascii=False))
    plot_losses(history, out / "loss.png")
    save_adapter(module.policy, out / "adapter")
    if spec.export:
        export_policy(module.policy, out / "export", spec.tokenizer_dir)
    return metrics
