"""Reward functions for RL: a small registry of `(prompt, completion, reference) -> float` callables.

Built in:
- `answer`: 1 when the completion's final answer equals the reference as a number (GSM8K's `#### N`,
  `\\boxed{}`, "the answer is" / "la respuesta es", else the last number; `models.answers` reads both
  languages' separators, e.g. Spanish `1.500`), else 0. The reference may be a bare number or a whole
  worked solution ending in `#### N`.
- `format`: 1 when the completion's last non-empty line is an answer line `#### <number>`, else 0.
- `reward_model`: a trained reward model's score of (prompt, completion), loaded once from `path` (a
  reward model folder, `models.reward`) by `loader` (`module:function`, default
  `models.reward:load_reward_model`; anything that returns a callable scoring a list of (prompt, answer)
  pairs). `normalize` (default true) standardises its scores with the spread measured at training time.
Any other name of the form `package.module:function` is imported: a reward function itself, or a
factory called with the entry's options that returns one. A reward function may also have a
`batch(prompts, completions, references) -> list[float]` method, used instead of one call per completion.

A recipe lists entries `{"name": ..., "weight": ..., **options}`; the total reward is the weighted sum.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from models.answers import extract_answer, is_correct


@runtime_checkable
class RewardFunction(Protocol):
    def __call__(self, prompt: str, completion: str, reference: str | None) -> float: ...


REGISTRY: dict[str, Callable[..., RewardFunction]] = {}
DEFAULT_RM_LOADER = "models.reward:load_reward_model"
_SPANISH = re.compile(
    r"[¿¡ñáéíóú]|\b(?:cuánto|cuántos|cuántas|es|el|la|los|las|de|del|y|que|en|un|una|por|con|para)\b",
    re.IGNORECASE,
)
_ENGLISH = re.compile(
    r"\b(?:what|how|many|much|is|the|of|and|in|a|an|to|for|with|does|do|he|she)\b", re.IGNORECASE
)
ANSWER_LINE = re.compile(r"^\s*####\s*[-−]?[$€£¥]?\s?\d[\d.,\u00a0\u2009\u202f ]*\S*\s*$")


def register(name: str):
    """Add a reward factory under `name` (called with the entry's options, returns a reward function)."""

    def add(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        REGISTRY[name] = factory
        return factory

    return add


def language_of(text: str) -> str:
    """'es' or 'en', by which language's common words and letters the text has more of."""
    return "es" if len(_SPANISH.findall(text)) > len(_ENGLISH.findall(text)) else "en"


def reference_value(reference: str | None, lang: str = "en") -> float | None:
    """The number a reference answer stands for (a bare number, or a solution ending in `#### N`)."""
    return None if reference is None else extract_answer(str(reference), lang)


@register("answer")
def answer_reward(lang: str = "auto") -> RewardFunction:
    """Exact match of the final answer with the reference, as numbers (`lang`: auto | en | es)."""

    def reward(prompt: str, completion: str, reference: str | None) -> float:
        language = language_of(prompt) if lang == "auto" else lang
        target = reference_value(reference, language)
        if target is None:
            return 0.0
        return float(is_correct(extract_answer(completion, language), target))

    return reward


@register("format")
def format_reward() -> RewardFunction:
    """The completion ends with an answer line `#### <number>`."""

    def reward(prompt: str, completion: str, reference: str | None) -> float:
        lines = [line for line in completion.splitlines() if line.strip()]
        return float(bool(lines) and ANSWER_LINE.match(lines[-1]) is not None)

    return reward


def import_object(dotted: str) -> Any:
    """`package.module:attribute`, imported."""
    module, _, attr = dotted.partition(":")
    if not module or not attr:
        raise ValueError(f"{dotted!r}: expected 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {dotted}: {e}") from None


class ModelReward:
    """A reward model's scores; `model` maps a list of (prompt, answer) pairs to a list of floats."""

    def __init__(self, model: Callable[[list[tuple[str, str]]], list[float]]):
        self.model = model

    def __call__(self, prompt: str, completion: str, reference: str | None) -> float:
        return float(self.model([(prompt, completion)])[0])

    def batch(
        self, prompts: Sequence[str], completions: Sequence[str], references: Sequence[str | None]
    ) -> list[float]:
        return [float(s) for s in self.model(list(zip(prompts, completions, strict=True)))]


@register("reward_model")
def reward_model_reward(path: str, loader: str = DEFAULT_RM_LOADER, normalize: bool = True) -> RewardFunction:
    """A trained reward model's score of (prompt, completion), loaded once by `loader(path)`."""
    import torch

    load = import_object(loader)
    kwargs = {"normalize": normalize} if loader == DEFAULT_RM_LOADER else {}
    if loader == DEFAULT_RM_LOADER and torch.cuda.is_available():
        kwargs["device"] = "cuda"
    return ModelReward(load(path, **kwargs))


@dataclass(frozen=True)
class RewardEntry:
    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: dict[str, Any]) -> RewardEntry:
        rest = dict(entry)
        if "name" not in rest:
            raise ValueError(f"reward entry {entry!r} has no 'name'")
        return cls(str(rest.pop("name")), float(rest.pop("weight", 1.0)), rest)


def build_reward(entry: RewardEntry) -> RewardFunction:
    if entry.name in REGISTRY:
        factory = REGISTRY[entry.name]
    elif ":" in entry.name:
        factory = import_object(entry.name)
    else:
        raise ValueError(
            f"unknown reward {entry.name!r}: choose among {sorted(REGISTRY)} "
            "or give 'package.module:function'"
        )
    if ":" in entry.name and not entry.options and _takes_three(factory):
        return factory  # the function itself
    try:
        return factory(**entry.options)
    except TypeError as e:
        raise ValueError(f"reward {entry.name!r}: {e}") from None


def _takes_three(fn: Callable) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 3


class Rewards:
    """Weighted sum of reward functions; each one's own scores are kept for the curves."""

    def __init__(self, entries: Sequence[dict[str, Any] | RewardEntry]):
        parsed = [e if isinstance(e, RewardEntry) else RewardEntry.parse(e) for e in entries]
        if not parsed:
            raise ValueError("no reward functions: list at least one, e.g. {'name': 'answer'}")
        names = [e.name for e in parsed]
        if len(set(names)) != len(names):
            raise ValueError(f"reward functions listed twice: {names}")
        self.entries = parsed
        self.functions = [build_reward(e) for e in parsed]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], references: Sequence[str | None]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """(total reward per completion, each function's reward per completion)."""
        parts: dict[str, list[float]] = {}
        for entry, fn in zip(self.entries, self.functions, strict=True):
            if callable(getattr(fn, "batch", None)):
                parts[entry.name] = [float(v) for v in fn.batch(prompts, completions, references)]
            else:
                parts[entry.name] = [
                    float(fn(p, c, r)) for p, c, r in zip(prompts, completions, references, strict=True)
                ]
        totals = [sum(e.weight * parts[e.name][i] for e in self.entries) for i in range(len(completions))]
        return totals, parts
