"""Small stand-ins for the stages before fine-tuning: a tokenizer with the chat markers and a base model,
each stored as a finished stage (manifest and all), so post-training tests start in seconds."""

from __future__ import annotations

from collections.abc import Iterable

from tasks.config import TokenizerConfig
from tasks.manifest import Manifest, StageDir, run_stage
from tasks.storage import Storage


def tokenizer_stage(storage: Storage, lines: Iterable[str], **settings) -> Manifest:
    """A tokenizer stage trained on `lines` (SentencePiece with the chat markers, as the real stage)."""
    from tasks.tokenizer.train import hf_files, train_model

    cfg = TokenizerConfig(max_sentences=1000, threads=1, **settings)
    model = train_model(iter(list(lines)), cfg)

    def build(out: StageDir) -> dict:
        import sentencepiece as spm

        storage.write_bytes_atomic(model, out.stage, out.key, "tokenizer.model")
        for name, data in hf_files(cfg, model).items():
            storage.write_bytes_atomic(data, out.stage, out.key, "hf", name)
        return {"vocab_size": spm.SentencePieceProcessor(model_proto=model).get_piece_size()}

    return run_stage(storage, "tokenizer", cfg, {}, "test", build)


def base_stage(storage: Storage, tokenizer: Manifest, seed: int = 0, **model) -> Manifest:
    """A 'pretrain' stage whose export is a freshly initialised Decoder (seeded)."""
    import torch

    from models.export import export_hf
    from models.model import Decoder, ModelConfig

    cfg = {"vocab_size": tokenizer.stats["vocab_size"], **model}

    def build(out: StageDir) -> dict:
        torch.manual_seed(seed)
        export_hf(
            Decoder(ModelConfig(**cfg)),
            out.path("export"),
            storage.path(tokenizer.stage, tokenizer.key, "hf"),
            extra={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3},
        )
        return {"model": cfg}

    return run_stage(
        storage, "pretrain", {"model": cfg, "seed": seed}, {"tokenizer": tokenizer}, "test", build
    )
