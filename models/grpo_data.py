"""Prompts for RL on disk and as batches.

A prompt file (`train.jsonl`, `val.jsonl`) holds one record per line: `{"prompt": the user's text, "ids":
the chat-template ids that ask for the assistant's turn, "reference": the reference answer or null}`. The
stage that writes them has checked that every prompt leaves room for the completion in the context.

Training batch `b` is prompts `[b*P, (b+1)*P)` of an endless sequence of shuffled passes (a fresh
permutation per pass, seeded), so a resumed run needs only the batch number; validation walks the held-out
prompts in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from models.data import ShuffledPasses, step_loader

Record = dict  # {"prompt": str, "ids": list[int], "reference": str | None}


def write_prompts(path: str | Path, records: Sequence[Record]) -> dict:
    """Write prompt records as JSONL; returns their count and prompt token statistics."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    lengths = [len(r["ids"]) for r in records]
    return {"prompts": len(records), "max_prompt_tokens": max(lengths, default=0)}


def read_prompts(path: str | Path) -> list[Record]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _as_list(rows: list[Record]) -> list[Record]:
    return rows


class PromptData(L.LightningDataModule):
    def __init__(
        self,
        folder: str | Path,
        prompts_per_step: int,
        seed: int = 0,
        val_batch: int = 64,
        batch_of_step: Callable[[int], int] = lambda step: step,
    ):
        super().__init__()
        self.folder, self.prompts_per_step, self.seed = Path(folder), prompts_per_step, seed
        self.val_batch, self.batch_of_step = val_batch, batch_of_step

    def setup(self, stage: str | None = None) -> None:
        self.train = read_prompts(self.folder / "train.jsonl")
        val = self.folder / "val.jsonl"
        self.val = read_prompts(val) if val.exists() else []

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        return step_loader(
            ShuffledPasses(self.train, self.seed, "prompts"),
            self.prompts_per_step,
            1,
            trainer,
            start_step=lambda: self.batch_of_step(trainer.global_step),
            collate_fn=_as_list,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.val_batch, shuffle=False, collate_fn=_as_list)
