"""Supervised fine-tuning as a stage: chat files -> encoded examples -> LoRA training in its own process.

The stage's key hashes its settings, the base model's and tokenizer's keys and the digests of the data
files (not their paths): the same base, data and settings find the finished run and do no work.
Writes `data/` (encoded train/val examples, `skipped.json`), `adapter/` (peft), `export/` (merged,
transformers-loadable, with the chat template), `checkpoints/`, `logs/`, `metrics.json`, `samples.json`,
`loss.png`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

from tasks import chat_data
from tasks.chat_data import encode_conversations, expand_inputs, read_chat_files, require_usable
from tasks.config import PLACEMENT_FIELDS, SFTConfig
from tasks.errors import ForjaInputError
from tasks.launcher import cache_root, run_training
from tasks.manifest import (
    Manifest,
    StageDir,
    canonical_json,
    code_version,
    run_stage,
)
from tasks.posttrain import (
    FRAME_MODULES,
    check_training,
    data_digests,
    local_models,
    policy_spec,
    run_report,
    tokenizer_of,
)
from tasks.storage import Storage

STAGE = "sft"
ENTRY = "models.sft"
MODEL_MODULES = ("models.sft", "models.sft_data", *FRAME_MODULES)
# Config fields that go to the trainer as they are
TRAINER_FIELDS = {
    "micro_batch",
    "accumulate",
    "max_steps",
    "val_every",
    "ckpt_every",
    "seed",
} | PLACEMENT_FIELDS


def is_val(messages: list[dict], fraction: float) -> bool:
    """Held out by a hash of the conversation's content: stable, and duplicates land on the same side."""
    digest = hashlib.sha256(canonical_json(messages).encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def prepare_examples(files: list[str], cfg: SFTConfig, template, max_length: int, folder: Path) -> dict:
    """Read, check and encode the conversations; write `train.npz`, `val.npz` and `skipped.json`."""
    from models.sft_data import write_examples

    read = read_chat_files(files, cfg.on_bad_input)
    kept, rendered, cut = encode_conversations(read, template, max_length)
    if cfg.on_bad_input == "fail" and read.skipped:
        raise ForjaInputError(f"{read.skipped[0]}; shorten it, raise sft.max_length or set on_bad_input=skip")
    require_usable(len(kept), read, "conversations")
    held = [is_val(c.messages, cfg.val_fraction) for c in kept]
    if all(held):  # too little data to hold any out
        held = [False] * len(kept)
    folder.mkdir(parents=True, exist_ok=True)
    train = write_examples(folder / "train.npz", [r for r, h in zip(rendered, held, strict=True) if not h])
    val = None
    if any(held):
        val = write_examples(folder / "val.npz", [r for r, h in zip(rendered, held, strict=True) if h])
    (folder / "skipped.json").write_text(json.dumps(read.report(), indent=2, ensure_ascii=False))
    return {
        "train": train,
        "val": val,
        "truncated": cut,
        "skipped": read.skip_counts(),
        "formats": dict(Counter(c.format for c in kept)),
        "files": read.files,
        "max_length": max_length,
    }


def sft(
    storage: Storage,
    cfg: SFTConfig,
    base: Manifest,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    """Fine-tune `base` (a pretrain or sft stage) on chat data with LoRA; `inputs` replace `cfg.data`."""
    tokenizer = tokenizer or tokenizer_of(base)
    files = expand_inputs(list(inputs or cfg.data))
    keyed = {
        **cfg.model_dump(mode="json", exclude={"launcher", "data", "base"}),
        "data": data_digests(files),
    }

    def build(out: StageDir) -> dict:
        check_training("sft", cfg)
        models = local_models(base, tokenizer, cache_root())
        template, context = models.template(), models.context
        max_length = min(cfg.max_length or context, context)
        data: dict = {}

        def spec(run_dir: Path) -> dict:
            data.update(prepare_examples(files, cfg, template, max_length, run_dir / "data"))
            samples = {"prompts": cfg.sample_prompts, "max_new_tokens": cfg.sample_tokens}
            return policy_spec(run_dir, models, cfg, TRAINER_FIELDS, samples=samples, pad_id=template.pad_id)

        run_dir = run_training(storage, out, ENTRY, spec, cfg.launcher, cfg.num_nodes, cfg.devices)
        report, _ = run_report(run_dir, out, base, "val/loss")
        return {**report, "data": data}

    version = code_version(sys.modules[__name__], chat_data, *MODEL_MODULES)
    return run_stage(storage, STAGE, keyed, {base.stage: base, "tokenizer": tokenizer}, version, build)
