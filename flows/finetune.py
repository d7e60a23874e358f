"""The fine-tuning flow: supervised fine-tuning (LoRA) of a trained model on chat data."""

from __future__ import annotations

from prefect import flow

from tasks.config import SFTConfig
from tasks.errors import ForjaInputError
from tasks.manifest import Manifest
from tasks.posttrain import manifest_at
from tasks.sft_steps import sft_task
from tasks.storage import Storage


@flow(name="sft", log_prints=True)
def sft_flow(
    config: SFTConfig | None = None,
    storage: str = "./forja-store",
    base: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    """Fine-tune `base` (a pretrain or sft manifest; default: the stage folder in `config.base`) on the
    chat files of `config.data` (or `inputs`)."""
    config = config or SFTConfig()
    if base is None:
        if not config.base:
            raise ForjaInputError("no model to fine-tune: pass a base manifest or set sft.base")
        base = manifest_at(config.base, "sft.base")
    return sft_task(Storage(storage), config, base, None, inputs)
