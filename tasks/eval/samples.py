"""Sample generations: a fixed list of English and Spanish prompts, continued greedily.

Greedy decoding makes them reproducible and comparable between models and backends: a change in what a
model writes comes from the model, not from the dice.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.eval.models import LanguageModel, Progress


def generate(
    model: LanguageModel,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[dict]:
    completions = model.greedy(prompts, max_new_tokens, (), batch_size, progress)
    return [{"prompt": p, "completion": c} for p, c in zip(prompts, completions, strict=True)]
