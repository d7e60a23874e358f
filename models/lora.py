"""LoRA adapters on our own Decoder through peft: apply, save, load, merge.

The model stays wrapped in peft while it trains, so `with policy.disable_adapter():` is the base model:
the reference of preference tuning costs no second copy. Adapters are saved in peft's format
(`adapter_config.json` + `adapter_model.safetensors`); `PeftModel.from_pretrained` reads them back onto
a fresh base built from the same export.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch.nn as nn

from models.model import Decoder

# The linear layers of both architectures (gate_proj exists in llama only).
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LINEAR_NAMES))
    # Whole modules trained and saved next to the adapter, e.g. ["norm"]; empty for a pure adapter.
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        unknown = sorted(set(self.target_modules) - set(LINEAR_NAMES))
        if unknown or not self.target_modules:
            raise ValueError(f"lora.target_modules {unknown or '[]'}: choose among {list(LINEAR_NAMES)}")
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("lora needs r >= 1, alpha > 0 and 0 <= dropout < 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def peft_config(self):
        from peft import LoraConfig

        # task_type stays unset: peft then wraps any torch module and calls its forward unchanged.
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            modules_to_save=list(self.modules_to_save) or None,
            bias="none",
        )


def apply_lora(model: Decoder, settings: LoraSettings):
    """Wrap `model` in peft with fresh LoRA matrices (B = 0: the wrapped model computes what the base did).

    peft modifies `model` in place and freezes every base weight; only the adapter (and
    `modules_to_save`) trains."""
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not present & set(settings.target_modules):
        raise ValueError(f"none of lora.target_modules {settings.target_modules} is in this model")
    return get_peft_model(model, settings.peft_config())


def save_adapter(model, folder: str | Path) -> Path:
    """The adapter alone, in peft's format."""
    folder = Path(folder)
    model.save_pretrained(str(folder))
    return folder


def load_adapter(base: Decoder, folder: str | Path, trainable: bool = False):
    """A saved adapter on a fresh base (frozen unless `trainable`, e.g. to continue tuning it)."""
    from peft import PeftModel

    missing = [f for f in ADAPTER_FILES if not (Path(folder) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a peft adapter folder: no {', '.join(missing)}")
    return PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)


def merged(model) -> Decoder:
    """A plain Decoder with the adapter folded into the weights (a copy; `model` keeps its adapter)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total
