"""A policy is a base Decoder plus an optional LoRA adapter: load one, and export one for transformers.

Post-training stages load their starting point here: the base from an earlier stage's export (or a
Lightning checkpoint), with the adapter of a fine-tuning stage on top, or a fresh one to train.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.chat import END, JINJA_TEMPLATE
from models.export import export_hf
from models.lora import LoraSettings, apply_lora, load_adapter, merged
from models.model import Decoder

SPECIAL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}  # the tokenizer stage's ids


def load_decoder(path: str | Path) -> Decoder:
    """A Decoder from a transformers folder (config.json + safetensors), a stage folder with `export/`,
    or a Lightning checkpoint of pretraining (`*.ckpt`)."""
    from models.load import load_checkpoint, load_hf_folder

    path = Path(path)
    if path.is_file() and path.suffix == ".ckpt":
        return load_checkpoint(path)
    if (path / "export" / "config.json").is_file():
        path = path / "export"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected an export folder or a .ckpt file")
    return load_hf_folder(path)


def load_policy(
    base: str | Path,
    adapter: str | Path | None = None,
    trainable: bool = False,
    lora: LoraSettings | None = None,
):
    """The base Decoder; with `adapter`, that saved adapter on it (peft model); with `lora` instead, a
    fresh adapter to train. `trainable` keeps a loaded adapter's weights trainable."""
    decoder = load_decoder(base)
    if adapter is not None:
        return load_adapter(decoder, adapter, trainable=trainable)
    if lora is not None:
        return apply_lora(decoder, lora)
    return decoder


def export_policy(model, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """The merged policy as a transformers folder, like pretraining's export, plus the chat format:
    `apply_chat_template` renders our template and generation also stops at `<|end|>`."""
    out = export_hf(merged(model), out_dir, tokenizer_dir, extra=SPECIAL_IDS)
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        import sentencepiece as spm

        config = json.loads(config_path.read_text())
        config["chat_template"] = JINJA_TEMPLATE
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        end_id = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).piece_to_id(END)
        generation = json.loads((out / "generation_config.json").read_text())
        generation["eos_token_id"] = [SPECIAL_IDS["eos_token_id"], end_id]
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
