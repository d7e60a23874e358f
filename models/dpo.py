"""Direct Preference Optimization with LoRA: `python -m models.dpo spec.json`.

The policy is the base model (an SFT stage's merged export, typically) with a fresh LoRA adapter; the
reference is the same model with the adapter disabled (`policy.disable_adapter()`), so no second copy of
the weights is held. At the start the adapter's B matrices are 0: policy and reference agree, every
margin is 0 and the loss is log 2. The run writes `curves.png` (loss, reward margin, preference accuracy)
next to what every post-training run writes (models.posttrain).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from models.curves import plot_preference_curves
from models.pair_data import PairData
from models.posttrain import PolicyModule, PostTrainSpec, run, seed_everything
from models.preference_loss import PreferenceOutput, dpo_loss, sequence_logps


@dataclass(kw_only=True)
class DPOSpec(PostTrainSpec):
    pad_id: int = 3
    beta: float = 0.1
    label_smoothing: float = 0.0


@contextlib.contextmanager
def reference_of(policy):
    """The policy with its adapter disabled, in eval mode (no dropout): the frozen reference model."""
    was_training = policy.training
    policy.eval()
    try:
        with policy.disable_adapter():
            yield policy
    finally:
        policy.train(was_training)


class PreferenceMetrics:
    """Sums over an evaluation: loss, correct pairs, margins and rewards, per pair."""

    NAMES = ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward")

    def __init__(self, device):
        self.sums = torch.zeros(len(self.NAMES), device=device, dtype=torch.float64)
        self.pairs = 0

    def add(self, out: PreferenceOutput) -> None:
        n = len(out.margins)
        values = [out.loss.detach() * n, (out.margins > 0).sum(), out.margins.sum()]
        values += [out.chosen_rewards.sum(), out.rejected_rewards.sum()]
        self.sums += torch.stack([v.double() for v in values])
        self.pairs += n

    def means(self) -> dict[str, float]:
        return {k: v / self.pairs for k, v in zip(self.NAMES, self.sums.tolist(), strict=True)}


def log_train(module, out: PreferenceOutput) -> None:
    module.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=False)
    module.log("train/accuracy", out.accuracy, on_step=True, on_epoch=False)
    module.log("train/margin", out.margins.mean(), on_step=True, on_epoch=False)
    module.log("train/lr", module.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)


class LitDPO(PolicyModule):
    def __init__(
        self,
        base: str,
        lora: dict,
        optim: dict,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        samples: dict | None = None,
        tokenizer_dir: str | None = None,
    ):
        super().__init__(base, lora, optim, None, samples, tokenizer_dir)
        self.beta, self.label_smoothing = beta, label_smoothing

    def preference(self, batch) -> PreferenceOutput:
        ids, targets, _ = batch
        x, y = ids[:, :-1], targets[:, :-1]
        policy = sequence_logps(self.policy(x)[0], y)
        with torch.no_grad(), reference_of(self.policy):
            reference = sequence_logps(self.policy(x)[0], y)
        n = len(policy) // 2
        return dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.beta, self.label_smoothing)

    def training_step(self, batch, batch_idx):
        out = self.preference(batch)
        log_train(self, out)
        return out.loss

    def on_validation_epoch_start(self):
        self._val = PreferenceMetrics(self.device)

    def validation_step(self, batch, batch_idx):
        self._val.add(self.preference(batch))

    def on_validation_epoch_end(self):
        if self._val.pairs:
            for name, value in self._val.means().items():
                self.log(f"val/{name}", value, prog_bar=name in ("loss", "accuracy"), sync_dist=True)
        super().on_validation_epoch_end()


@torch.no_grad()
def reference_gap(module: LitDPO, ids: torch.Tensor) -> float:
    """Largest |logit| difference between the adapter-disabled policy and the base loaded afresh from its
    export: 0 when the reference really is the base model."""
    from models.policy import load_decoder

    base = load_decoder(module.hparams.base).to(ids.device).eval()
    with reference_of(module.policy):
        reference = module.policy(ids)[0]
    return float((reference - base(ids)[0]).abs().max())


def train(spec: DPOSpec) -> dict:
    seed_everything(spec.seed)  # before the adapter's random initialisation
    module = LitDPO(
        spec.base,
        spec.lora,
        {**spec.optim, "max_steps": spec.max_steps},
        spec.beta,
        spec.label_smoothing,
        spec.samples,
        spec.tokenizer_dir,
    )
    data = PairData(spec.data_dir, spec.micro_batch, spec.accumulate, spec.pad_id, spec.seed)
    has_val = (Path(spec.data_dir) / "val" / "chosen.npz").exists()
    metrics = run(spec, module, data, has_val=has_val)
    if not metrics:  # not rank 0
        return metrics
    out = Path(spec.out_dir)
    data.setup()
    ids = data._collate([data.train[i] for i in range(min(4, len(data.train)))])[0]
    metrics["reference_max_abs_diff"] = reference_gap(module, ids.to(module.device))
    metrics["beta"] = spec.beta
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_preference_curves(metrics["history"], out / "curves.png", f"DPO (beta {spec.beta})")
    return metrics


def main(argv: list[str] | None = None) -> None:
    from models.train import run_cli

    run_cli(__doc__, "DPO", DPOSpec.load, train, argv)


if __name__ == "__main__":
    main()
