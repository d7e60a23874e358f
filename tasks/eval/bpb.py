"""Bits per byte on held-out text: comparable across models whatever their tokenizer.

Each text is encoded by the model's own tokenizer as one document (start tokens, the text, EOS) and cut
into the non-overlapping windows of `models.data.FixedWindows`, the windows pretraining validates on.
The loss in nats per token becomes bits per byte exactly as the pretrain stage's `val/bpb` does:
nats / ln 2 / (text bytes per token). A tokenizer with longer tokens has fewer, harder tokens; per byte,
the two are measured on the same ground.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.data import FixedWindows, ShardSet
from tasks.eval.models import LanguageModel, Progress


@dataclass(frozen=True)
class TextLoss:
    nats: float  # summed over the scored tokens
    tokens: int  # tokens scored
    bytes_per_token: float  # of the whole text under this tokenizer

    @property
    def bits(self) -> float:
        return self.nats / math.log(2)

    @property
    def bytes(self) -> float:
        return self.tokens * self.bytes_per_token

    @property
    def bpb(self) -> float:
        return self.bits / self.bytes if self.tokens else math.nan


def windows(
    model: LanguageModel, text: str, limit: int | None, max_window: int
) -> tuple[FixedWindows, float]:
    """The text's evaluation windows (the model's context, at most `max_window` tokens, at most the
    text) and its bytes per predicted token."""
    tokens = model.prefix + model.encode(text) + ([model.eos_id] if model.eos_id is not None else [])
    predicted = len(tokens) - 1
    size = max(1, min(model.context, max_window, predicted))
    shards = ShardSet([np.asarray(tokens, dtype=np.int64)])
    return FixedWindows(shards, size, limit or 2**62), len(text.encode("utf-8")) / max(predicted, 1)


@torch.inference_mode()
def text_loss(
    model: LanguageModel,
    text: str,
    limit: int | None = None,
    max_window: int = 1024,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> TextLoss:
    data, bytes_per_token = windows(model, text, limit, max_window)
    nats, scored = 0.0, 0
    for start in range(0, len(data), batch_size):
        xs, ys = zip(*(data[i] for i in range(start, min(start + batch_size, len(data)))), strict=True)
        x, y = torch.stack(xs).to(model.device), torch.stack(ys).to(model.device)
        logits = model.logits(x)
        nats += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
        scored += y.numel()
        if progress:
            progress(len(xs))
    return TextLoss(nats, scored, bytes_per_token)


def window_count(model: LanguageModel, text: str, limit: int | None, max_window: int) -> int:
    return len(windows(model, text, limit, max_window)[0])


def summarize(losses: dict[str, TextLoss]) -> dict:
    """Bits per byte of each text and of all of them together (bits over bytes, not a mean of ratios)."""
    bits = sum(t.bits for t in losses.values())
    size = sum(t.bytes for t in losses.values())
    return {
        "bpb": bits / size if size else math.nan,
        "texts": {
            name: {"bpb": t.bpb, "tokens": t.tokens, "bytes_per_token": t.bytes_per_token}
            for name, t in losses.items()
        },
    }
