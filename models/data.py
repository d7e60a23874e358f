"""Batches of token windows from the token shards, the same on one process or many.

Sample `i` of training is a window at a position drawn from a generator seeded with `(seed, i)`; the
samples of optimizer step `s` are `[s*B, (s+1)*B)` for a global batch of B. Each rank takes its slice of
that range, so one process and N processes (or nodes) see exactly the same data per step, and resuming at
step `s` needs nothing but `s`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass(frozen=True)
class ShardSet:
    """Token shards of one split, concatenated end to end (documents are already separated by eos)."""

    arrays: list[np.ndarray]

    @classmethod
    def open(cls, folder: str | Path, split: str) -> ShardSet:
        folder = Path(folder)
        index = json.loads((folder / "index.json").read_text())
        dtype = np.dtype(index["dtype"])
        arrays = []
        for shard in index["shards"]:
            if shard["split"] == split and shard["tokens"] > 0:
                arrays.append(np.memmap(folder / shard["path"], dtype=dtype, mode="r"))
        return cls(arrays)

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) across shard boundaries."""
        offsets, out, need = self.offsets, [], length
        shard = int(np.searchsorted(offsets, start, side="right")) - 1
        pos = start - offsets[shard]
        while need > 0:
            piece = self.arrays[shard][pos : pos + need]
            out.append(piece)
            need -= len(piece)
            shard, pos = shard + 1, 0
        return np.concatenate(out).astype(np.int64)


class RandomWindows(Dataset):
    """Sample i -> (x, y) for a window at a position derived from (seed, i) alone."""

    def __init__(self, shards: ShardSet, context: int, seed: int):
        if len(shards) <= context + 1:
            raise ValueError(
                f"the training split has {len(shards)} tokens, fewer than one window of {context + 1}; "
                "add text to the corpus or lower the model's context"
            )
        self.shards, self.context, self.seed = shards, context, seed

    def __len__(self) -> int:
        return 2**62  # effectively endless: training length is set in steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(np.random.default_rng([self.seed, i]).integers(0, len(self.shards) - self.context - 1))
        tokens = torch.from_numpy(self.shards.window(start, self.context + 1))
        return tokens[:-1], tokens[1:]


class FixedWindows(Dataset):
    """Validation: non-overlapping windows from the start of the split, at most `limit` of them."""

    def __init__(self, shards: ShardSet, context: int, limit: int):
        self.shards, self.context = shards, context
        self.n = min(limit, max(0, (len(shards) - 1) // context))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(self.shards.window(i * self.context, self.context + 1))
        return tokens[:-1], tokens[1:]


class StepSampler(Sampler[int]):
    """This rank's sample indices, step after step, from the step training is at (read when iterated)."""

    def __init__(
        self, micro_batch: int, accumulate: int, rank: int, world: int, start_step: Callable[[], int]
    ):
        self.micro, self.accumulate, self.rank, self.world = micro_batch, accumulate, rank, world
        self.start_step = start_step

    def __iter__(self) -> Iterator[int]:
        global_batch = self.micro * self.accumulate * self.world
        step = self.start_step()
        while True:
            for a in range(self.accumulate):
                base = step * global_batch + (a * self.world + self.rank) * self.micro
                yield from range(base, base + self.micro)
            step += 1


def step_loader(
    dataset: Dataset,
    micro_batch: int,
    accumulate: int,
    trainer,
    start_step: Callable[[], int] | None = None,
    **loader,
) -> DataLoader:
    """Training batches of a Lightning trainer's rank, from the step it is at (read when iterated, so a
    resumed run starts where it stopped); `start_step` maps that to another numbering (e.g. GRPO batches)."""
    sampler = StepSampler(
        micro_batch,
        accumulate,
        trainer.global_rank,
        trainer.world_size,
        start_step=start_step or (lambda: trainer.global_step),
    )
    return DataLoader(dataset, batch_size=micro_batch, sampler=sampler, **loader)


class ShuffledPasses(Dataset):
    """Endless: sample i -> item of pass i // n, in that pass's own permutation (seeded by (seed, pass)),
    so any rank and any resumed run find the same item for the same i."""

    def __init__(self, items: Sequence, seed: int, what: str = "examples"):
        if len(items) == 0:
            raise ValueError(f"no training {what}")
        self.items, self.seed = items, seed
        self._pass, self._order = -1, np.arange(0)

    def __len__(self) -> int:
        return 2**62  # training length is set in steps

    def index(self, i: int) -> int:
        """Which item sample i is."""
        n = len(self.items)
        if i // n != self._pass:
            self._pass, self._order = i // n, np.random.default_rng([self.seed, i // n]).permutation(n)
        return int(self._order[i % n])

    def __getitem__(self, i: int):
        return self.items[self.index(i)]


def bytes_per_token(folder: str | Path, split: str = "val") -> float:
    """Text bytes per token of a split, to turn a loss in nats/token into bits per byte."""
    totals = json.loads((Path(folder) / "index.json").read_text())["totals"][split]
    return totals["bytes"] / totals["tokens"] if totals["tokens"] else math.nan
