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
from tasks.launcher import cache_root, local_copy, run_training
from tasks.manifest import (
    MANIFEST,
    Manifest,
    StageDir,
    canonical_json,
    code_version,
    read_manifest,
    run_stage,
)
from tasks.storage import Storage, open_url

STAGE = "sft"
ENTRY = "models.sft"
# The post-training frame: every post-training stage's code version covers these modules
FRAME_MODULES = (
    "models.posttrain",
    "models.chat",
    "models.lora",
    "models.policy",
    "models.load",
    "models.export",
    "models.model",
    "models.data",
    "models.lightning",
    "models.train",
)
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


def storage_of(manifest: Manifest) -> Storage:
    """The storage root a manifest lives in (its url is `<root>/<stage>/<key>`)."""
    return Storage(manifest.url.rsplit("/", 2)[0])


def manifest_at(url: str) -> Manifest:
    """The manifest of a stage folder given by URL or path (or of its manifest.json)."""
    url = url.rstrip("/").removesuffix("/" + MANIFEST)
    try:
        with open_url(f"{url}/{MANIFEST}") as f:
            return Manifest.model_validate_json(f.read())
    except FileNotFoundError:
        raise ForjaInputError(
            f"{url}: no {MANIFEST}; sft.base must be a finished stage folder such as "
            "forja-store/pretrain/<key>"
        ) from None


def tokenizer_of(base: Manifest) -> Manifest:
    """The tokenizer stage a base model was trained with (its lineage)."""
    ref = base.inputs.get("tokenizer")
    found = read_manifest(Storage(ref.url.rsplit("/", 2)[0]), ref.stage, ref.key) if ref else None
    if found is None:
        raise ForjaInputError(f"{base.url}: its tokenizer stage is missing from its lineage or storage")
    return found


def data_digests(files: list[str]) -> list[dict]:
    """Name, size and sha256 of each data file, in order: the data's part of the stage key."""
    out = []
    for url in files:
        h, size = hashlib.sha256(), 0
        with open_url(url) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        out.append({"name": url.rstrip("/").rsplit("/", 1)[-1], "bytes": size, "sha256": h.hexdigest()})
    return out


def is_val(messages: list[dict], fraction: float) -> bool:
    """Held out by a hash of the conversation's content: stable, and duplicates land on the same side."""
    digest = hashlib.sha256(canonical_json(messages).encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def context_of(export_dir: Path) -> int:
    config = json.loads((export_dir / "config.json").read_text())
    return int(config.get("n_positions") or config["max_position_embeddings"])


def check_settings(cfg: SFTConfig) -> None:
    """Reject settings the trainer would refuse, before anything runs (the message names the key)."""
    from models.lightning import OptimConfig
    from models.lora import LoraSettings

    try:
        OptimConfig(**cfg.optim)
    except TypeError as e:
        raise ForjaInputError(f"sft.optim: {e}") from None
    try:
        LoraSettings(**cfg.lora.model_dump())
    except ValueError as e:
        raise ForjaInputError(f"sft.{e}") from None


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
        from models.chat import ChatTemplate

        check_settings(cfg)
        cache = cache_root()
        base_dir = local_copy(storage_of(base), base.stage, base.key, cache, "export")
        tokenizer_dir = local_copy(storage_of(tokenizer), tokenizer.stage, tokenizer.key, cache, "hf")
        template = ChatTemplate.from_file(tokenizer_dir)
        context = context_of(base_dir)
        max_length = min(cfg.max_length or context, context)
        data: dict = {}

        def spec(run_dir: Path) -> dict:
            data.update(prepare_examples(files, cfg, template, max_length, run_dir / "data"))
            return {
                "out_dir": str(run_dir),
                "base": str(base_dir),
                "data_dir": str(run_dir / "data"),
                "tokenizer_dir": str(tokenizer_dir),
                "lora": cfg.lora.model_dump(),
                "optim": cfg.optim,
                "samples": {"prompts": cfg.sample_prompts, "max_new_tokens": cfg.sample_tokens},
                "pad_id": template.pad_id,
                **cfg.model_dump(include=TRAINER_FIELDS),
            }

        run_dir = run_training(storage, out, ENTRY, spec, cfg.launcher, cfg.num_nodes, cfg.devices)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        samples = json.loads((run_dir / "samples.json").read_text())
        return {
            **{k: v for k, v in metrics.items() if k != "history"},
            "data": data,
            "evaluations": [r for r in metrics["history"] if "val/loss" in r],
            "samples": samples[-1]["samples"] if samples else {},
            "samples_before": samples[0]["samples"] if len(samples) > 1 else {},
            "base": base.url,
            "adapter": out.url("adapter"),
            "export": out.url("export"),
        }

    version = code_version(sys.modules[__name__], chat_data, *MODEL_MODULES)
    return run_stage(storage, STAGE, keyed, {base.stage: base, "tokenizer": tokenizer}, version, build)
