"""Encoded preference pairs on disk and as padded batches, for DPO and the reward model.

A split is two example files of models.sft_data's format, `chosen.npz` and `rejected.npz`, aligned by
index: pair i is chosen example i against rejected example i, both the same prompt followed by one answer
(the mask is 1 on the answer's tokens and its closing `<|end|>`). A batch of B pairs is one tensor of 2B
rows, the chosen answers first, so the policy sees both answers of a pair in one forward pass.

Training sample i is pair `permutation(seed, i // n)[i % n]` (a fresh order per pass over the n pairs) and
step s uses samples [s*B, (s+1)*B) (models.data.StepSampler), as in SFT: one process or N see the same
pairs per step, and a resumed run needs only the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from models.data import ShuffledPasses, step_loader
from models.model import IGNORE_INDEX
from models.sft_data import ExampleSet, write_examples

Row = tuple[np.ndarray, np.ndarray]  # (ids, answer mask)


def write_pairs(folder: str | Path, chosen: Sequence, rejected: Sequence) -> dict:
    """Write aligned `chosen.npz` / `rejected.npz` (anything with `.ids` and `.mask`); returns counts."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen answers for {len(rejected)} rejected ones")
    folder = Path(folder)
    c = write_examples(folder / "chosen.npz", chosen)
    r = write_examples(folder / "rejected.npz", rejected)
    return {"pairs": c["examples"], "tokens": c["tokens"] + r["tokens"]}


class PairSet:
    def __init__(self, folder: str | Path):
        self.chosen = ExampleSet.open(Path(folder) / "chosen.npz")
        self.rejected = ExampleSet.open(Path(folder) / "rejected.npz")
        if len(self.chosen) != len(self.rejected):
            raise ValueError(f"{folder}: chosen and rejected files hold different numbers of examples")

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, i: int) -> tuple[Row, Row]:
        return self.chosen[i], self.rejected[i]


def pair_batch(pairs: Sequence[tuple[Row, Row]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(ids, targets, lengths) for B pairs, 2B rows: chosen answers in rows [0, B), rejected in [B, 2B).

    ids (2B, T): each sequence right-padded; targets (2B, T): targets[:, t] is the token after ids[:, t]
    where it belongs to the answer, IGNORE_INDEX elsewhere (so logits of ids[:, :-1] score the answers
    against targets[:, :-1]); lengths (2B,): real tokens per row (the last one closes the answer)."""
    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    lengths = torch.empty(len(rows), dtype=torch.long)
    for i, (row_ids, mask) in enumerate(rows):
        n = len(row_ids)
        row = torch.as_tensor(np.asarray(row_ids, dtype=np.int64))
        keep = torch.as_tensor(np.asarray(mask, dtype=bool))
        ids[i, :n] = row
        targets[i, : n - 1] = torch.where(keep[1:], row[1:], IGNORE_INDEX)
        lengths[i] = n
    return ids, targets, lengths


class PairData(L.LightningDataModule):
    def __init__(self, folder: str | Path, micro_batch: int, accumulate: int, pad_id: int, seed: int = 0):
        super().__init__()
        self.folder, self.micro_batch, self.accumulate = Path(folder), micro_batch, accumulate
        self.pad_id, self.seed = pad_id, seed

    def setup(self, stage: str | None = None) -> None:
        self.train = PairSet(self.folder / "train")
        self.val = PairSet(self.folder / "val") if (self.folder / "val" / "chosen.npz").exists() else None

    def _collate(self, pairs):
        return pair_batch(pairs, self.pad_id)

    def train_dataloader(self) -> DataLoader:
        passes = ShuffledPasses(self.train, self.seed, "pairs")
        return step_loader(passes, self.micro_batch, self.accumulate, self.trainer, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        pairs = [self.val[i] for i in range(len(self.val))] if self.val is not None else []
        return DataLoader(pairs, batch_size=self.micro_batch, shuffle=False, collate_fn=self._collate)
