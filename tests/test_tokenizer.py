"""The tokenizer stage: exact round trip, transformers export, shards that hold the exact encoding."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.config import CorpusConfig, ShardsConfig, TokenizerConfig
from tasks.corpus.shards import iter_records
from tasks.errors import ForjaInputError
from tasks.manifest import run_stage
from tasks.storage import Storage
from tasks.tokenizer.shards import load_shard, tokenize_corpus
from tasks.tokenizer.train import corpus_folders, is_val, load_processor, train_tokenizer

TOK = TokenizerConfig(vocab_size=1200, val_fraction=0.1)


def _corpus_from_texts(storage: Storage, docs: list[dict], name: str = "docs"):
    """A corpus manifest over one shard folder of `docs` (what the corpus stage hands over)."""
    from tasks.corpus.shards import shard_writer

    def build(out):
        from datatrove.data import Document

        writer = shard_writer(out.folder("shards"))
        with writer:
            for d in docs:
                writer.write(Document(text=d["text"], id=d["id"], metadata=d.get("metadata", {})), rank=0)
        return {"documents": len(docs)}

    part = run_stage(storage, "detox", {"name": name}, {}, "test", build)
    return run_stage(
        storage,
        "stats",
        {"name": name},
        {"part": part},
        "test",
        lambda out: {"parts": [{"stage": "detox", "key": part.key}], "tokens_estimate": 1000},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tokenizer and shards over the sample's Wikipedia paragraphs and books (English and Spanish)."""
    from tasks.corpus.collect import collect

    storage = Storage(str(tmp_path_factory.mktemp("tok")))
    cfg = CorpusConfig.model_validate({"tasks": 1, "workers": 1})
    collected = collect(storage, cfg, [str(SAMPLE / "wiki"), str(SAMPLE / "books")])
    docs = list(iter_records(storage.datafolder("collect", collected.key, "shards")))
    corpus = _corpus_from_texts(storage, docs, "sample")
    tokenizer = train_tokenizer(storage, TOK, corpus)
    shards = tokenize_corpus(storage, ShardsConfig(tasks=2, workers=1), TOK, corpus, tokenizer)
    return storage, corpus, tokenizer, shards, docs


unicode_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=300
)
hard_cases = st.sampled_from(
    [
        "¿Qué tal, señor Muñoz? ¡Muy bien!",
        "emoji 🤖🧪👩🏽‍🔬 and flags 🇪🇸",
        "漢字かなカナ한국어",
        "e\u0301 n\u0303 combining marks",
        "control \x00\x01\x07\x1b chars\r\n\tand tabs",
        "  leading and trailing spaces  ",
        "a" * 2000,
        "Pneumonoultramicroscopicsilicovolcanoconiosis" * 20,
        "<|user|>hola<|end|><|assistant|>¿sí?<|end|>",
        "",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(unicode_text, hard_cases, st.lists(hard_cases).map("".join)))
def test_decode_encode_is_identity_for_any_unicode(trained, text):
    sp = load_processor(trained[0], trained[2])
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert sp.unk_id() not in ids, "byte fallback: nothing is unknown"


def test_special_tokens_are_single_pieces(trained):
    storage, _, tokenizer, _, _ = trained
    sp = load_processor(storage, tokenizer)
    specials = tokenizer.stats["special_tokens"]
    assert [specials[k] for k in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert sp.encode(token) == [specials[token]]
    assert sp.encode("2024") == [sp.piece_to_id(d) for d in "2024"], "digits are split"


def test_transformers_loads_the_export_with_the_same_ids(trained):
    from transformers import AutoTokenizer

    storage, _, tokenizer, _, docs = trained
    sp = load_processor(storage, tokenizer)
    hf = AutoTokenizer.from_pretrained(storage.path("tokenizer", tokenizer.key, "hf"))
    samples = [d["text"][:2000] for d in docs[:20]] + [
        "¿Dónde está la biblioteca? ¡Aquí, señora Ibáñez!",
        "<|user|>What is 12 + 30?<|end|><|assistant|>42<|end|>",
        "  spaces,\ttabs\nand newlines  ",
    ]
    for text in samples:
        ids = hf.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text)
        assert hf.decode(ids) == text
    assert hf.eos_token_id == 2 and hf.pad_token_id == 3 and len(hf) == tokenizer.stats["vocab_size"]


def test_report_measures_english_and_spanish(trained):
    tokenizer = trained[2]
    heldout = tokenizer.stats["heldout"]
    assert {"en", "es"} <= set(heldout)
    for lang in ("en", "es"):
        assert heldout[lang]["documents"] > 5
        assert 2.0 < heldout[lang]["bytes_per_token"] < 6.0
        assert 1.0 < heldout[lang]["tokens_per_word"] < 3.0
    assert len(tokenizer.stats["learned_pieces"]) == 20


def test_shards_hold_exactly_the_encoded_documents(trained):
    storage, _, tokenizer, shards, docs = trained
    sp = load_processor(storage, tokenizer)
    eos = shards.stats["eos_id"]
    assert shards.stats["dtype"] == "uint16"
    found = {"train": [], "val": []}
    for entry in shards.stats["shards"]:
        tokens = load_shard(storage, shards, entry["path"])
        assert len(tokens) == entry["tokens"]
        assert isinstance(tokens, np.memmap) or entry["tokens"] == 0
        cuts = np.flatnonzero(tokens == eos)
        assert len(cuts) == entry["documents"] and (len(tokens) == 0 or cuts[-1] == len(tokens) - 1)
        found[entry["split"]] += [tuple(seq.tolist()) for seq in np.split(tokens, cuts + 1)[:-1]]
        assert all(seq[-1] == eos for seq in np.split(tokens, cuts + 1)[:-1])
    expected = {"train": [], "val": []}
    for d in docs:
        expected["val" if is_val(d["id"], TOK.val_fraction) else "train"].append(
            tuple(sp.encode(d["text"]) + [eos])
        )
    for split in ("train", "val"):
        assert sorted(found[split]) == sorted(expected[split])
    assert 0 < len(found["val"]) < 0.2 * len(docs)
    index = shards.stats
    assert index["totals"]["train"]["tokens"] + index["totals"]["val"]["tokens"] == index["tokens"]


def test_same_corpus_same_config_is_cached_and_vocab_change_reruns_only_the_tokenizer(trained):
    storage, corpus, tokenizer, shards, _ = trained
    again = train_tokenizer(storage, TOK, corpus)
    assert again.key == tokenizer.key and again.created_at == tokenizer.created_at
    bigger = train_tokenizer(storage, TOK.model_copy(update={"vocab_size": 1300}), corpus)
    assert bigger.key != tokenizer.key
    assert tokenize_corpus(storage, ShardsConfig(tasks=2, workers=1), TOK, corpus, bigger).key != shards.key


def test_too_little_text_is_a_clear_error(tmp_path):
    storage = Storage(str(tmp_path))
    tiny = _corpus_from_texts(
        storage, [{"id": f"d{i}", "text": f"Hola mundo número {i}."} for i in range(30)]
    )
    with pytest.raises(
        ForjaInputError, match=r"not enough text for a vocabulary of 4096.*lower tokenizer.vocab_size"
    ):
        train_tokenizer(storage, TokenizerConfig(vocab_size=4096), tiny)
    empty = _corpus_from_texts(storage, [], "empty")
    with pytest.raises(ForjaInputError, match="no training text"):
        train_tokenizer(storage, TokenizerConfig(), empty)


def test_unigram_and_char_models_round_trip(tmp_path, trained):
    storage, corpus = trained[0], trained[1]
    for kind, vocab in (("unigram", 1200), ("char", 400)):
        cfg = TokenizerConfig(model_type=kind, vocab_size=vocab, val_fraction=0.1)
        m = train_tokenizer(storage, cfg, corpus)
        sp = load_processor(storage, m)
        text = "¿Qué tal? Ñandú 🤖 and tea."
        assert sp.decode(sp.encode(text)) == text
        if kind == "char":
            assert all(len(sp.id_to_piece(i)) == 1 for i in sp.encode("abcñ"))
    assert corpus_folders(storage, corpus)
