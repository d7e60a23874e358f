"""Encoded chat examples on disk and as padded training batches.

An example file (`.npz`) holds every example's ids and assistant mask end to end (`ids`, `mask`) and
where each one starts (`offsets`, n + 1 entries). Batches are padded, not packed: each row is one
conversation, right-padded to the longest row of its micro-batch, so no example attends to another
(our attention is causal only, with no per-document mask) and short chat data wastes little.

Training sample `i` is example `perm(seed, i // n)[i % n]`, a fresh permutation per pass over the data,
and step `s` uses samples `[s*B, (s+1)*B)` (models.data.StepSampler): one process or N see the same
examples per step, and a resumed run needs only the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from models.data import ShuffledPasses, step_loader
from models.model import IGNORE_INDEX


def write_examples(path: str | Path, examples: Sequence) -> dict:
    """Write examples (anything with `.ids` and `.mask`) to one .npz; returns their token counts."""
    lengths = [len(e.ids) for e in examples]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    ids = np.fromiter((t for e in examples for t in e.ids), dtype=np.int32, count=int(offsets[-1]))
    mask = np.fromiter((t for e in examples for t in e.mask), dtype=np.uint8, count=int(offsets[-1]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, ids=ids, mask=mask, offsets=offsets)
    return {"examples": len(examples), "tokens": int(offsets[-1]), "answer_tokens": int(mask.sum())}


@dataclass(frozen=True)
class ExampleSet:
    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray

    @classmethod
    def open(cls, path: str | Path) -> ExampleSet:
        with np.load(path) as z:
            return cls(z["ids"], z["mask"].astype(bool), z["offsets"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.mask[a:b]


def pad_batch(
    rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (B, T): inputs are ids[:-1], targets ids[1:] where the mask is 1 and
    IGNORE_INDEX elsewhere (prompt, role markers, padding)."""
    width = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        keep = torch.as_tensor(np.asarray(mask, dtype=bool))
        n = len(ids) - 1
        x[r, :n] = ids[:-1]
        y[r, :n] = torch.where(keep[1:], ids[1:], IGNORE_INDEX)
    return x, y


class ChatData(L.LightningDataModule):
    def __init__(self, folder: str | Path, micro_batch: int, accumulate: int, pad_id: int, seed: int = 0):
        super().__init__()
        self.folder, self.micro_batch, self.accumulate = Path(folder), micro_batch, accumulate
        self.pad_id, self.seed = pad_id, seed

    def setup(self, stage: str | None = None) -> None:
        examples = ExampleSet.open(self.folder / "train.npz")
        self.train = ShuffledPasses(examples, self.seed)
        counted = np.concatenate([[0], np.cumsum(examples.mask, dtype=np.int64)])
        starts, ends = examples.offsets[:-1], examples.offsets[1:]
        self.targets = counted[ends] - counted[starts + 1]  # answer tokens that are targets (not the first)
        val = self.folder / "val.npz"
        self.val = ExampleSet.open(val) if val.exists() else None

    def _collate(self, rows):
        return pad_batch(rows, self.pad_id)

    def step_targets(self, step: int) -> int:
        """Target tokens in the whole batch of optimizer step `step`, over every micro-batch and rank: the
        loss divides by this, so a step's gradient is the same on one process or N, with any accumulation."""
        world = self.trainer.world_size if self.trainer is not None else 1
        size = self.micro_batch * self.accumulate * world
        samples = range(step * size, (step + 1) * size)
        return int(sum(self.targets[self.train.index(i)] for i in samples))

    def train_dataloader(self) -> DataLoader:
        return step_loader(
            self.train, self.micro_batch, self.accumulate, self.trainer, collate_fn=self._collate
        )

    def val_dataloader(self) -> DataLoader:
        rows = [self.val[i] for i in range(len(self.val))] if self.val is not None else []
        return DataLoader(rows, batch_size=self.micro_batch, shuffle=False, collate_fn=self._collate)
