"""Supervised fine-tuning with LoRA: `python -m models.sft spec.json`.

The same command runs on one process, on several local ones (Lightning re-executes it per rank) or on
every node of a cluster, like `models.train`. The loss is the cross-entropy of the assistant tokens only
(the mask of the chat template); prompts, role markers and padding add nothing to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from models.model import IGNORE_INDEX
from models.posttrain import PolicyModule, PostTrainSpec, run, seed_everything
from models.sft_data import ChatData


@dataclass(kw_only=True)
class SFTSpec(PostTrainSpec):
    pad_id: int = 3


class LitSFT(PolicyModule):
    def training_step(self, batch, batch_idx):
        x, y = batch
        logits, _ = self.policy(x)
        total = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        # Every target token of the step weighs the same, whichever micro-batch or rank holds it: divide
        # by the step's token count; Lightning divides by the accumulation steps and DDP averages over ranks.
        trainer = self.trainer
        scale = trainer.world_size * trainer.accumulate_grad_batches
        loss = total * scale / max(1, trainer.datamodule.step_targets(self.global_step))
        self.log("train/loss", total / (y != IGNORE_INDEX).sum().clamp(min=1), prog_bar=True, on_step=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self):
        self._val = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss sum, tokens, correct

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits, _ = self.policy(x)
        keep = y != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum")
        correct = (logits[keep].argmax(-1) == y[keep]).sum()
        self._val += torch.stack([loss.double(), keep.sum().double(), correct.double()])

    def on_validation_epoch_end(self):
        loss_sum, tokens, correct = self._val.tolist()
        if tokens:
            self.log("val/loss", loss_sum / tokens, prog_bar=True, sync_dist=True)
            self.log("val/token_acc", correct / tokens, sync_dist=True)
        super().on_validation_epoch_end()


def train(spec: SFTSpec) -> dict:
    seed_everything(spec.seed)  # before the adapter's random initialisation
    module = LitSFT(
        spec.base,
        spec.lora,
        {**spec.optim, "max_steps": spec.max_steps},
        spec.adapter,
        spec.samples,
        spec.tokenizer_dir,
    )
    data = ChatData(spec.data_dir, spec.micro_batch, spec.accumulate, spec.pad_id, spec.seed)
    return run(spec, module, data, has_val=(Path(spec.data_dir) / "val.npz").exists())


def main(argv: list[str] | None = None) -> None:
    from models.train import run_cli

    run_cli(__doc__, "fine-tuning", SFTSpec.load, train, argv)


if __name__ == "__main__":
    main()
