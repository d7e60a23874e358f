"""Train a SentencePiece tokenizer on the corpus and export it for `transformers`.

The tokenizer round-trips any text exactly: no normalisation (`identity`), whitespace kept as is, byte
fallback for characters without a piece, digits split. Chat role markers are pieces of their own.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator

import sentencepiece as spm
import xxhash

from tasks.config import TokenizerConfig
from tasks.corpus.shards import iter_records
from tasks.errors import ForjaInputError
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage

STAGE = "tokenizer"
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
_WORD = re.compile(r"\w+")


def is_val(doc_id: str, fraction: float) -> bool:
    """The same documents are held out by every stage: a hash of the id, not a random draw."""
    return xxhash.xxh64_intdigest(doc_id.encode("utf-8")) < fraction * 2**64


def corpus_folders(storage: Storage, corpus: Manifest) -> list:
    """Shard folders of a corpus (the stats manifest lists the parts that make it up)."""
    return [storage.datafolder(p["stage"], p["key"], "shards") for p in corpus.stats["parts"]]


def training_lines(records: Iterator[dict], cfg: TokenizerConfig) -> Iterator[str]:
    """Lines of the training split; overlong lines cut, since SentencePiece silently drops them."""
    for rec in records:
        if is_val(rec["id"], cfg.val_fraction):
            continue
        for line in rec["text"].split("\n"):
            if not line.strip():
                continue
            data = line.encode("utf-8")
            for start in range(0, len(data), cfg.max_line_bytes):
                yield data[start : start + cfg.max_line_bytes].decode("utf-8", errors="ignore")


def train_model(lines: Iterator[str], cfg: TokenizerConfig) -> bytes:
    """SentencePiece model bytes; a corpus too small for the vocabulary is a clear input error."""
    model = io.BytesIO()
    seen = {"lines": 0}

    def counted() -> Iterator[str]:
        for line in lines:
            seen["lines"] += 1
            yield line

    spm.set_random_generator_seed(cfg.seed)  # the line sample, hence the model, is reproducible
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted(),
            model_writer=model,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            byte_fallback=cfg.byte_fallback,
            split_digits=cfg.split_digits,
            user_defined_symbols=cfg.special_tokens,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            unk_piece=UNK,
            bos_piece=BOS,
            eos_piece=EOS,
            pad_piece=PAD,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            max_sentence_length=cfg.max_line_bytes,
            input_sentence_size=cfg.max_sentences,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=1_000_000,
            num_threads=cfg.threads,
            hard_vocab_limit=cfg.model_type != "char",
            minloglevel=2,
        )
    except RuntimeError as e:
        if seen["lines"] == 0:
            raise ForjaInputError(
                "the corpus has no training text for the tokenizer; build a corpus first "
                "(forja corpus) or lower tokenizer.val_fraction"
            ) from None
        if "Vocabulary size" in str(e) or "vocab_size" in str(e):
            raise ForjaInputError(
                f"not enough text for a vocabulary of {cfg.vocab_size} ({seen['lines']} lines): "
                f"{str(e).strip()}; lower tokenizer.vocab_size or add text to the corpus"
            ) from None
        raise
    return model.getvalue()


def hf_files(cfg: TokenizerConfig, model: bytes, context: int = 2048) -> dict[str, bytes]:
    """What `transformers.AutoTokenizer.from_pretrained` needs for a Llama-style SentencePiece tokenizer."""
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "model_max_length": context,
        "clean_up_tokenization_spaces": False,
    }
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    return {
        "tokenizer.model": model,
        "tokenizer_config.json": json.dumps(config, indent=2).encode(),
        "special_tokens_map.json": json.dumps(special, indent=2).encode(),
    }


def learned_pieces(sp: spm.SentencePieceProcessor, n: int = 20) -> list[str]:
    """The first pieces the trainer added beyond single characters (for BPE: its first merges)."""
    pieces = []
    for i in range(sp.get_piece_size()):
        if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        piece = sp.id_to_piece(i)
        if len(piece) > 1 and not (piece.startswith("<|") and piece.endswith("|>")):
            pieces.append(piece)
        if len(pieces) == n:
            break
    return pieces


def heldout_report(sp: spm.SentencePieceProcessor, records: Iterator[dict], cfg: TokenizerConfig) -> dict:
    """Bytes per token and tokens per word on held-out documents, per language."""
    totals: dict[str, dict[str, int]] = {}
    for rec in records:
        if not is_val(rec["id"], cfg.val_fraction):
            continue
        lang = rec.get("metadata", {}).get("lang", "und")
        t = totals.setdefault(lang, {"documents": 0, "bytes": 0, "tokens": 0, "words": 0})
        t["documents"] += 1
        t["bytes"] += len(rec["text"].encode("utf-8"))
        t["tokens"] += len(sp.encode(rec["text"]))
        t["words"] += len(_WORD.findall(rec["text"]))
    return {
        lang: {
            **t,
            "bytes_per_token": round(t["bytes"] / t["tokens"], 3) if t["tokens"] else None,
            "tokens_per_word": round(t["tokens"] / t["words"], 3) if t["words"] else None,
        }
        for lang, t in sorted(totals.items())
    }


def train_tokenizer(storage: Storage, cfg: TokenizerConfig, corpus: Manifest) -> Manifest:
    folders = corpus_folders(storage, corpus)

    def build(out: StageDir) -> dict:
        model = train_model(training_lines(iter_records(*folders), cfg), cfg)
        storage.write_bytes_atomic(model, STAGE, out.key, "tokenizer.model")
        for name, data in hf_files(cfg, model).items():
            storage.write_bytes_atomic(data, STAGE, out.key, "hf", name)
        sp = spm.SentencePieceProcessor(model_proto=model)
        vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n" for i in range(sp.get_piece_size()))
        storage.write_bytes_atomic(vocab.encode(), STAGE, out.key, "tokenizer.vocab")
        return {
            "vocab_size": sp.get_piece_size(),
            "model_type": cfg.model_type,
            "special_tokens": {p: sp.piece_to_id(p) for p in [UNK, BOS, EOS, PAD, *cfg.special_tokens]},
            "heldout": heldout_report(sp, iter_records(*folders), cfg),
            "learned_pieces": learned_pieces(sp),
        }

    return run_stage(storage, STAGE, cfg, {"corpus": corpus}, code_version(sys.modules[__name__]), build)


def load_processor(storage: Storage, tokenizer: Manifest) -> spm.SentencePieceProcessor:
    with storage.fs.open(storage.path(STAGE, tokenizer.key, "tokenizer.model"), "rb") as f:
        return spm.SentencePieceProcessor(model_proto=f.read())
