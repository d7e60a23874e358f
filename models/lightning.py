"""The decoder as a LightningModule (AdamW with decay groups, warmup + cosine, bits per byte, samples) and
the token shards as a LightningDataModule."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import lightning as L
import torch
from torch.utils.data import DataLoader

from models.data import FixedWindows, RandomWindows, ShardSet, step_loader
from models.model import Decoder, ModelConfig


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    max_steps: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    decay_embeddings: bool = False  # see Decoder.param_groups

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to min_lr at max_steps."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def adamw(self, groups: list[dict]) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW over the parameter groups, with this warmup + cosine schedule stepped once per step."""
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(self.beta1, self.beta2), eps=self.eps)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_at(step) / self.lr)

    def lightning(self, groups: list[dict]) -> dict:
        """`adamw` as a LightningModule's configure_optimizers returns it."""
        opt, sched = self.adamw(groups)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class SampleConfig:
    prompts: list[str] = field(default_factory=lambda: ["The ", "El "])
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_k: int | None = 50


class LitDecoder(L.LightningModule):
    def __init__(
        self,
        model: dict,
        optim: dict,
        bytes_per_token: float = math.nan,
        samples: dict | None = None,
        tokenizer_model: bytes | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_model"])
        self.model_cfg = ModelConfig(**model)
        self.optim = OptimConfig(**optim)
        self.sample_cfg = SampleConfig(**(samples or {}))
        self.model = Decoder(self.model_cfg)
        self.bytes_per_token = bytes_per_token
        self.tokenizer_model = tokenizer_model
        self.samples: list[dict] = []
        self._val_sum = self._val_count = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        # Only on the steps the loggers write: each self.log call costs about as much as a small model's
        # step gains from a few % of speed (measured in benchmarks/pretrain_throughput.py).
        if logs_this_step(self.trainer):
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self):
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_count = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits, _ = self.model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        self._val_sum += loss.double()
        self._val_count += y.numel()

    def on_validation_epoch_end(self):
        if not self._val_count:
            return
        loss = (self._val_sum / self._val_count).float()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        if not math.isnan(self.bytes_per_token):
            self.log("val/bpb", loss / math.log(2) / self.bytes_per_token, sync_dist=True)
        if self.tokenizer_model and self.global_rank == 0 and not self.trainer.sanity_checking:
            self.samples.append({"step": self.global_step, "samples": self.generate_samples()})

    def generate_samples(self) -> dict[str, str]:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=self.tokenizer_model)
        out, gen = {}, torch.Generator(device=self.device).manual_seed(1234)
        for prompt in self.sample_cfg.prompts:
            idx = torch.tensor([sp.encode(prompt)], dtype=torch.long, device=self.device)
            ids = self.model.generate(
                idx,
                self.sample_cfg.max_new_tokens,
                temperature=self.sample_cfg.temperature,
                top_k=self.sample_cfg.top_k,
                eos_id=sp.eos_id(),
                generator=gen,
            )
            out[prompt] = sp.decode(ids[0].tolist())
        return out

    def configure_optimizers(self):
        o = self.optim
        return o.lightning(self.model.param_groups(o.weight_decay, o.decay_embeddings))

    # Exact resume: Lightning restores weights, optimizer, scheduler and the step (hence the data position);
    # the random generators (dropout, sampling) travel in the checkpoint too.
    def on_save_checkpoint(self, checkpoint):
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "samples": self.samples}

    def on_load_checkpoint(self, checkpoint):
        if "rng" in checkpoint:
            torch.set_rng_state(checkpoint["rng"]["torch"])
            self.samples = checkpoint["rng"]["samples"]


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether the optimizer step now running is one the loggers write (every log_every_n_steps)."""
    return (trainer.global_step + 1) % trainer.log_every_n_steps == 0


class Throughput(L.Callback):
    """Tokens per second and model FLOPs utilisation (against `peak_flops`, when known), over the steps
    since the last logger write, logged on the steps the loggers write."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None):
        self.tokens_per_step, self.flops_per_token, self.peak_flops = (
            tokens_per_step,
            flops_per_token,
            peak_flops,
        )
        self._t0: float | None = None
        self._step0 = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t0 is None:
            self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # global_step has moved past the step that just ended: that step was logged if this is a multiple
        mid_accumulation = (batch_idx + 1) % trainer.accumulate_grad_batches
        if mid_accumulation or trainer.global_step % trainer.log_every_n_steps:
            return
        now = time.perf_counter()
        seconds, steps = now - (self._t0 or now), trainer.global_step - self._step0
        self._t0, self._step0 = now, trainer.global_step
        if seconds <= 0 or steps <= 0:
            return
        tps = self.tokens_per_step * steps / seconds
        pl_module.log("perf/tokens_per_s", tps, on_step=True, on_epoch=False)
        if self.peak_flops:
            pl_module.log(
                "perf/mfu", tps * self.flops_per_token / self.peak_flops, on_step=True, on_epoch=False
            )


class TokenData(L.LightningDataModule):
    def __init__(
        self,
        folder: str,
        context: int,
        micro_batch: int,
        accumulate: int,
        seed: int = 0,
        val_windows: int = 200,
        num_workers: int = 0,
    ):
        super().__init__()
        self.folder, self.context, self.seed = folder, context, seed
        self.micro_batch, self.accumulate, self.val_windows = micro_batch, accumulate, val_windows
        self.num_workers = num_workers

    def setup(self, stage: str | None = None) -> None:
        self.train = RandomWindows(ShardSet.open(self.folder, "train"), self.context, self.seed)
        self.val = FixedWindows(ShardSet.open(self.folder, "val"), self.context, self.val_windows)

    def train_dataloader(self) -> DataLoader:
        return step_loader(
            self.train, self.micro_batch, self.accumulate, self.trainer, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.micro_batch, shuffle=False)
