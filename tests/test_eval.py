"""Evaluation: HellaSwag picks what a model learned, chance on a random one, answers read in English and
Spanish, Forja's Decoder and transformers agree on the same export, caching, clear errors, the command."""

from __future__ import annotations

import bz2
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from models.export import export_hf
from models.model import Decoder, ModelConfig
from tasks.config import EvalConfig, TokenizerConfig, load_config
from tasks.errors import ForjaInputError
from tasks.eval import gsm8k, hellaswag
from tasks.eval import models as backends
from tasks.eval import source as sources
from tasks.eval.steps import evaluate, result_rows
from tasks.manifest import run_stage
from tasks.storage import Storage
from tasks.tokenizer.train import hf_files, train_model

VOCAB = 2000
HANDMADE = [
    hellaswag.Item(
        "Baking bread: She mixes flour, water and yeast in a bowl. Then she",
        (
            "kneads the dough and bakes it in the oven.",
            "paints the old fence of the garden blue.",
            "swims across the cold lake at night.",
            "reads a newspaper on the train to work.",
        ),
        0,
    ),
    hellaswag.Item(
        "Paella: El cocinero calienta el aceite en la paellera. Después",
        (
            "se sube a un árbol para ver el mar.",
            "apaga la televisión y se va a dormir.",
            "añade el arroz, el azafrán y el caldo.",
            "compra un billete de avión a Lisboa.",
        ),
        2,
    ),
    hellaswag.Item(
        "Montaña: ¿Quién sube a la montaña con el niño? La señora Núñez",
        (
            "vende zapatos en una tienda del centro.",
            "escribe una carta a su hermano en Chile.",
            "cierra la ventana porque hace frío.",
            "sube con él y dice: ¡qué bonita es la vista!",
        ),
        3,
    ),
    hellaswag.Item(
        "Chess: Two friends sit at a table with a board. The first player",
        (
            "cooks a large pot of soup for dinner.",
            "moves a pawn two squares forward.",
            "jumps into the pool with his shoes on.",
            "sings a song about the mountains.",
        ),
        1,
    ),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread never waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A SentencePiece tokenizer (as the tokenizer stage makes it) trained on the sample's books."""
    lines = []
    for path in sorted((REPO / "data/sample/books").rglob("*.*")):
        lines += [line for line in path.read_text("utf-8").splitlines() if line.strip()]
    cfg = TokenizerConfig(vocab_size=VOCAB)
    folder = tmp_path_factory.mktemp("tokenizer")
    for name, data in hf_files(cfg, train_model(iter(lines), cfg)).items():
        (folder / name).write_bytes(data)
    return folder


def _export(model: Decoder, folder: Path, tokenizer: Path) -> Path:
    # the same call models.train makes at the end of pretraining
    return export_hf(
        model, folder, tokenizer, extra={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    )


@pytest.fixture(scope="module")
def random_export(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    model = Decoder(ModelConfig(arch="gpt2", vocab_size=VOCAB, context=256, n_layer=1, n_head=2, d_model=32))
    return _export(model, tmp_path_factory.mktemp("random") / "export", tokenizer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer) -> tuple[Decoder, Path]:
    """A small Llama-style Decoder trained for a few seconds on the hand-made items' right endings."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    stream = []
    for _ in range(60):  # documents joined by EOS, as in the token shards
        for item in HANDMADE:
            stream += sp.encode(f"{item.context} {item.endings[item.label]}") + [sp.eos_id()]
    data = torch.tensor(stream)
    cfg = ModelConfig(
        arch="llama", vocab_size=VOCAB, context=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64
    )
    torch.manual_seed(0)
    model = Decoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        starts = torch.randint(0, len(data) - cfg.context - 1, (8,), generator=gen)
        x = torch.stack([data[s : s + cfg.context] for s in starts])
        y = torch.stack([data[s + 1 : s + cfg.context + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5, f"the model did not learn the items (loss {loss.item():.3f})"
    return model.eval(), _export(model, tmp_path_factory.mktemp("trained") / "export", tokenizer)


# ---------------------------------------------------------------- HellaSwag


def test_hellaswag_picks_the_endings_the_model_learned(trained):
    _, export = trained
    for backend in ("forja", "transformers"):
        lm = backends.open_model(sources.resolve(export), backend)
        metrics, details = hellaswag.evaluate(lm, HANDMADE, batch_size=3)
        assert metrics == {"acc_norm": 1.0, "acc": 1.0, "items": 4}, (backend, details)
        assert [d["pred_norm"] for d in details] == [0, 2, 3, 1]


def test_random_model_scores_near_chance_on_real_items(random_export):
    lm = backends.open_model(sources.resolve(random_export), "forja")
    items = hellaswag.load(str(REPO / "data/eval/hellaswag/val-400.txt"), limit=300)
    assert len(items) == 300 and {i.label for i in items} == {0, 1, 2, 3}
    metrics, _ = hellaswag.evaluate(lm, items, batch_size=32)
    assert 0.15 <= metrics["acc_norm"] <= 0.35, metrics
    assert 0.15 <= metrics["acc"] <= 0.35, metrics


def test_hellaswag_reads_compressed_text_and_original_jsonl(tmp_path):
    plain = REPO / "data/eval/hellaswag/val-400.txt"
    packed = tmp_path / "val.txt.bz2"
    packed.write_bytes(bz2.compress(plain.read_bytes()))
    assert hellaswag.load(str(packed), 50) == hellaswag.load(str(plain), 50)

    record = {
        "activity_label": "Roof shingle removal",
        "ctx": "A man is sitting on a roof. he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "label": 3,
    }
    (tmp_path / "val.jsonl").write_text(json.dumps(record) + "\n")
    assert hellaswag.load(str(tmp_path / "val.jsonl")) == hellaswag.load(str(plain), 1)

    (tmp_path / "bad.txt").write_text(plain.read_text().replace("\n3\n", "\nthree\n", 1))
    with pytest.raises(ForjaInputError, match=r"bad.txt \(line 2\): gold label 'three' is not 0-3"):
        hellaswag.load(str(tmp_path / "bad.txt"))


# ---------------------------------------------------------------- GSM8K / MGSM answers


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72", "en", 72),
        ("#### 1,234", "en", 1234),
        ("The answer is $1,450,000.", "en", 1450000),
        ("She has -7 apples left.", "en", -7),
        ("#### −12", "en", -12),
        ("10-3=7", "en", 7),
        ("It costs $5.", "en", 5),
        ("It costs 5 dollars in total", "en", 5),
        ("So the answer is 5.00.", "en", 5),
        ("He runs 2.5 miles. The answer is 12.75 miles", "en", 12.75),
        ("1,234.5 in total", "en", 1234.5),
        ("\\boxed{42}, since 6 * 7 = 42 and 7 > 1", "en", 42),
        ("It weighs 1.500 kg", "en", 1.5),  # English: the point is decimal
        ("La respuesta es 1,5 kg.", "es", 1.5),  # Spanish decimal comma
        ("Un lápiz cuesta $1,20.", "es", 1.2),
        ("Cuesta 1.500 euros.", "es", 1500),  # Spanish: point + three digits is thousands
        ("Cuesta 1.234,5 euros.", "es", 1234.5),
        ("Paga 80 000 dólares en total.", "es", 80000),  # MGSM's Spanish thousands
        ("Respuesta: ¡18 huevos!", "es", 18),
        ("La respuesta final es 276,000.", "es", 276000),
        ("Vale 0.125 del total", "es", 0.125),
    ],
)
def test_answer_extraction(text, lang, expected):
    assert gsm8k.extract_answer(text, lang) == pytest.approx(expected)


def test_answers_without_a_number_and_exact_match():
    assert gsm8k.extract_answer("I do not know.") is None
    assert gsm8k.extract_answer("versión 1.2.3") is None
    assert gsm8k.is_correct(5.0, 5) and not gsm8k.is_correct(None, 5) and not gsm8k.is_correct(5.01, 5)


def test_bundled_math_sets_read_the_same_answers_in_both_languages():
    en = gsm8k.load(str(REPO / "data/eval/mgsm/mgsm_en.tsv"), "en")
    es = gsm8k.load(str(REPO / "data/eval/mgsm/mgsm_es.tsv"), "es")
    assert len(en) == len(es) == 250
    assert [p.target for p in en] == [p.target for p in es]  # "5,600" and "276,000" in Spanish too
    test = gsm8k.load(str(REPO / "data/eval/gsm8k/test-300.jsonl"), "en")
    assert len(test) == 300 and all(p.target == int(p.target) for p in test)


# ---------------------------------------------------------------- two backends, one stage


def _results(m) -> dict:
    return {(r["task"], r["metric"]): r["value"] for r in result_rows(m)}


def _details(storage: Storage, m, task: str) -> list[dict]:
    return [
        json.loads(line) for line in storage.read_text("eval", m.key, "details", f"{task}.jsonl").splitlines()
    ]


def test_forja_and_transformers_give_the_same_numbers(trained, random_export, tmp_path):
    storage = Storage(str(tmp_path / "store"))
    cfg = EvalConfig(limit=3, max_new_tokens=16, sample_tokens=12, batch_size=4)
    for export, tasks in ((trained[1], cfg.tasks), (random_export, ["bpb", "hellaswag", "samples"])):
        runs = {
            b: evaluate(storage, cfg.model_copy(update={"backend": b, "tasks": tasks}), str(export))
            for b in ("forja", "transformers")
        }
        forja, hf = runs["forja"], runs["transformers"]
        assert forja.key != hf.key and forja.stats["model"]["backend"] == "forja"
        assert forja.stats["model"]["params"] == hf.stats["model"]["params"]
        a, b = _results(forja), _results(hf)
        assert a.keys() == b.keys() and ("bpb/es", "bits/byte") in a
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-4), k
        for one, other in zip(
            _details(storage, forja, "hellaswag"), _details(storage, hf, "hellaswag"), strict=True
        ):
            assert one["logprob"] == pytest.approx(other["logprob"], abs=1e-3)
        for task in [t for t in tasks if t in ("gsm8k", "mgsm_en", "mgsm_es")]:
            texts = [d["completion"] for d in _details(storage, forja, task)]
            assert texts == [d["completion"] for d in _details(storage, hf, task)], task
        assert forja.stats["samples"] == hf.stats["samples"]
        assert [s["prompt"] for s in forja.stats["samples"]][-3].startswith("Érase")
        saved = json.loads(storage.read_text("eval", forja.key, "eval.json"))
        assert saved["results"] == forja.stats["results"]


def test_any_transformers_model_folder(tokenizer, tmp_path):
    """A model our Decoder cannot represent (GPT-NeoX) runs through transformers; forja says why not."""
    import shutil

    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    folder = tmp_path / "neox"
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tokenizer / name, folder / name)
    storage = Storage(str(tmp_path / "store"))
    cfg = EvalConfig(limit=2, max_new_tokens=8, sample_tokens=8)
    m = evaluate(storage, cfg, str(folder))
    assert m.stats["model"]["backend"] == "transformers" and m.stats["model"]["context"] == 128
    assert m.stats["results"]["mgsm_es"]["items"] == 2 and len(m.stats["samples"]) == 6
    assert 0 < m.stats["results"]["bpb"]["bpb"] < 20
    with pytest.raises(
        ForjaInputError, match="Decoder cannot represent this model.*use --set eval.backend=transformers"
    ):
        evaluate(storage, cfg.model_copy(update={"backend": "forja"}), str(folder))


def test_same_model_and_settings_are_evaluated_once(random_export, tmp_path):
    storage = Storage(str(tmp_path / "store"))
    cfg = EvalConfig(limit=3, tasks=["bpb", "hellaswag"])
    first = evaluate(storage, cfg, str(random_export))
    results = Path(storage.path("eval", first.key, "eval.json"))
    written = results.stat().st_mtime_ns
    started = time.perf_counter()
    again = evaluate(storage, cfg, str(random_export))
    assert time.perf_counter() - started < 5
    assert again.key == first.key and again.created_at == first.created_at
    assert results.stat().st_mtime_ns == written, "nothing was rewritten"
    assert evaluate(storage, cfg.model_copy(update={"batch_size": 1}), str(random_export)).key == first.key
    assert evaluate(storage, cfg.model_copy(update={"limit": 2}), str(random_export)).key != first.key


def test_stage_manifests_folders_and_checkpoints_name_the_same_model(trained, tokenizer, tmp_path):
    model, export = trained
    storage = Storage(str(tmp_path / "store"))

    def build(out):  # what a training stage leaves: an export folder named in its stats
        import shutil

        shutil.copytree(export, out.path("export"))
        return {"export": out.url("export")}

    stage = run_stage(storage, "sft", {"run": 1}, {}, "test", build)
    cfg = EvalConfig(limit=2, tasks=["bpb", "hellaswag"])
    by_manifest = evaluate(storage, cfg, stage)
    assert by_manifest.stats["model"] | {"params": 0} == {
        "url": stage.url,
        "stage": "sft",
        "key": stage.key,
        "backend": "forja",  # auto: a Forja stage runs on Forja's own Decoder
        "params": 0,
        "context": 64,
    }
    assert by_manifest.inputs["model"].key == stage.key
    assert evaluate(storage, cfg, storage.url("sft", stage.key)).key == by_manifest.key
    assert evaluate(storage, cfg, storage.url("sft", stage.key, "manifest.json")).key == by_manifest.key

    # A training checkpoint, laid out as Lightning saves LitDecoder (hyperparameters + "model." weights),
    # next to the run's spec.json that names the tokenizer.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"tokenizer_dir": str(tokenizer)}))
    torch.save(
        {
            "hyper_parameters": {"model": model.cfg.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        run / "checkpoints" / "last.ckpt",
    )
    by_ckpt = evaluate(storage, cfg, str(run / "checkpoints" / "last.ckpt"))
    assert by_ckpt.stats["model"]["stage"] == "checkpoint" and by_ckpt.key != by_manifest.key
    assert _results(by_ckpt) == pytest.approx(_results(by_manifest))


def test_models_and_results_in_s3(trained, tmp_path, monkeypatch):
    """Storage root, stage manifest and model folder all in an S3-speaking server (moto, over HTTP)."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name, value in {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("FORJA_CACHE", str(tmp_path / "cache"))
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="forja-eval")
        storage = Storage("s3://forja-eval/root")

        def build(out):
            for f in trained[1].iterdir():
                storage.write_bytes_atomic(f.read_bytes(), "sft", out.key, "export", f.name)
            return {"export": out.url("export")}

        stage = run_stage(storage, "sft", {"run": 3}, {}, "test", build)
        cfg = EvalConfig(limit=2, tasks=["bpb", "hellaswag", "samples"], sample_tokens=8)
        first = evaluate(storage, cfg, stage)
        assert first.url.startswith("s3://forja-eval/root/eval/")
        assert storage.list_files("eval", first.key) == [
            "details/hellaswag.jsonl",
            "eval.json",
            "manifest.json",
        ]
        assert evaluate(storage, cfg, f"{stage.url}/manifest.json").created_at == first.created_at
        folder = evaluate(storage, cfg, f"{stage.url}/export")  # a plain remote folder: transformers
        assert folder.stats["model"]["backend"] == "transformers"
        assert _results(folder) == pytest.approx(_results(first), abs=1e-4)
        assert folder.stats["samples"] == first.stats["samples"]
    finally:
        server.stop()


def test_bad_model_references_name_the_path_and_the_fix(tmp_path, trained):
    storage = Storage(str(tmp_path / "store"))
    cfg = EvalConfig(limit=1, tasks=["bpb"])
    missing = tmp_path / "no-such-model"
    with pytest.raises(ForjaInputError, match=f"model {missing} not found; pass a model folder"):
        evaluate(storage, cfg, str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForjaInputError, match="empty: no config.json, manifest.json or .ckpt there"):
        evaluate(storage, cfg, str(tmp_path / "empty"))
    stage = run_stage(storage, "sft", {"run": 2}, {}, "test", lambda out: {})
    with pytest.raises(ForjaInputError, match=f"sft {stage.key}: no exported model at .*/export"):
        evaluate(storage, cfg, stage)
    with pytest.raises(ForjaInputError, match="transformers cannot load"):
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "config.json").write_text("{}")
        evaluate(storage, cfg, str(broken))
    with pytest.raises(ForjaInputError, match="bpb_texts: nope.txt not found"):
        evaluate(storage, cfg.model_copy(update={"bpb_texts": ["nope.txt"]}), str(trained[1]))
    with pytest.raises(ForjaInputError, match=r"eval.tasks has unknown tasks \['mmlu'\]"):
        load_config(None, ["eval.tasks=[bpb, mmlu]"])


# ---------------------------------------------------------------- the command


def test_forja_eval_command(random_export, tmp_path):
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1"}

    def forja(*args):
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", "eval", "--storage", str(tmp_path / "store"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = forja("--input", str(tmp_path / "nothing-here"))
    assert r.returncode == 2 and f"model {tmp_path / 'nothing-here'} not found" in r.stderr
    assert r.stdout == ""

    r = forja("--input", str(random_export), "--limit", "2", "--json", "--set", "eval.max_new_tokens=8")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads(r.stdout)
    assert manifest["stage"] == "eval" and manifest["config"]["limit"] == 2
    results = manifest["stats"]["results"]
    assert set(results) == {"bpb", "hellaswag", "gsm8k", "mgsm_en", "mgsm_es"}
    assert results["hellaswag"]["items"] == 2 and results["mgsm_es"]["items"] == 2
    assert results["bpb"]["bpb"] > 0 and len(manifest["stats"]["samples"]) == 6
    assert (tmp_path / "store" / "eval" / manifest["key"] / "eval.json").is_file()
