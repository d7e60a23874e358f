"""Supervised fine-tuning with LoRA: it teaches a base model a task it cannot do, the adapter and the
merged export reproduce the trained model, and an unchanged rerun does no work."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from tasks.storage import Storage

LETTERS = "abcdefghijklmnopqrstuvwxyzñáéíóú"
TOOLS = "Respuesta: ¿?¡!"
WORD_MIN, WORD_MAX = 4, 5


def _answer(word: str) -> str:
    return f"Respuesta: {word[::-1]}"


def _words(n: int, seed: int) -> list[str]:
    """n distinct random words, in random order (a sorted split would hold out only the last letters)."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(WORD_MIN, WORD_MAX))))
    order = sorted(words)
    rng.shuffle(order)
    return order


def _data_files(folder: Path, words: list[str]) -> list[str]:
    """The task in all three formats, plus records the stage must skip (and count)."""
    folder.mkdir(parents=True, exist_ok=True)
    third = len(words) // 3
    chat = [
        {"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": _answer(w)}]}
        for w in words[:third]
    ]
    chat += [
        {"messages": [{"role": "user", "content": "sin respuesta"}]},
        {"messages": [{"role": "user", "content": "x" * 60}, {"role": "assistant", "content": "no cabe"}]},
    ]
    sharegpt = [
        {"conversations": [{"from": "human", "value": w}, {"from": "gpt", "value": _answer(w)}]}
        for w in words[third : 2 * third]
    ]
    instructions = [{"instruction": w, "input": "", "output": _answer(w)} for w in words[2 * third :]]
    instructions.append({"instruction": "vacío", "output": ""})
    (folder / "chat.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chat))
    (folder / "sharegpt.json").write_text(json.dumps(sharegpt, ensure_ascii=False))
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in instructions) + "{not json\n"
    (folder / "instructions.jsonl").write_text(body)
    return [str(folder / n) for n in ("chat.jsonl", "sharegpt.json", "instructions.jsonl")]


def _config(**over):
    from tasks.config import SFTConfig

    settings = {
        # the norms train too: with frozen random ones the final scale would be out of the adapter's reach
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "modules_to_save": ["norm"]},
        "optim": {"lr": 5e-3, "min_lr": 5e-4, "warmup_steps": 20, "weight_decay": 0.0},
        "micro_batch": 32,
        "max_steps": 600,
        "val_every": 300,
        "ckpt_every": 300,
        "accelerator": "cpu",
        "sample_prompts": ["hola", "niño"],
        "sample_tokens": 20,
        **over,
    }
    return SFTConfig(**settings)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread per process is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("FORJA_PROGRESS", "0")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reversal(tmp_path_factory, one_thread):
    """A random-init base (it cannot answer "Respuesta: <word reversed>"), fine-tuned on 1,800 examples
    of the task through the real stage: data readers, launcher, `python -m models.sft`."""
    from chat_helpers import base_stage, tokenizer_stage

    from tasks.sft import sft

    root = tmp_path_factory.mktemp("sft")
    storage = Storage(str(root / "store"))
    words = _words(2000, seed=0)
    train, heldout = words[:1800], words[1800:]
    lines = [f"{_answer(w)} {TOOLS} {w}" for w in train[:400]]
    tok = tokenizer_stage(storage, lines, model_type="char", vocab_size=300, character_coverage=1.0)
    # A trained model's embeddings have grown well past the 0.02 initialisation; frozen 0.02 ones cap
    # every logit near +-1, where no adapter can make a confident prediction. 0.1 stands in for that.
    base = base_stage(storage, tok, arch="gpt2", n_layer=2, n_head=4, d_model=64, context=32, init_std=0.1)
    files = _data_files(root / "data", train)
    manifest = sft(storage, _config(), base, tok, files)
    return {
        "storage": storage,
        "manifest": manifest,
        "base": base,
        "tok": tok,
        "files": files,
        "test": heldout,
    }


def _exact_match(policy, template, words: list[str]) -> float:
    from models.chat import generate_replies

    replies = generate_replies(policy, template, [[{"role": "user", "content": w}] for w in words], 24)
    return sum(r == _answer(w) for r, w in zip(replies, words, strict=True)) / len(words)


def _paths(run) -> tuple[Path, Path, Path]:
    st, m = run["storage"], run["manifest"]
    base = Path(st.path("pretrain", run["base"].key, "export"))
    return base, Path(st.path("sft", m.key)), Path(st.path("tokenizer", run["tok"].key, "hf"))


def test_sft_teaches_a_task_the_base_cannot_do(reversal):
    from models.chat import ChatTemplate
    from models.policy import load_policy

    base_dir, out, tok_dir = _paths(reversal)
    template = ChatTemplate.from_file(tok_dir)
    policy = load_policy(base_dir, out / "adapter")
    with policy.disable_adapter():  # the base model, as preference tuning will use it
        before = _exact_match(policy, template, reversal["test"])
    after = _exact_match(policy, template, reversal["test"])
    assert before <= 0.05, before
    assert after >= 0.8, f"held-out exact match {after:.2f} after fine-tuning"

    s = reversal["manifest"].stats
    assert s["val_loss"] < 0.5 * s["val_loss_start"]
    assert s["data"]["formats"] == {"messages": 600, "sharegpt": 600, "instruction": 600}
    assert s["data"]["train"]["examples"] + s["data"]["val"]["examples"] == 1800
    skipped = json.loads((out / "data" / "skipped.json").read_text())
    assert {(Path(r["file"]).name, r["record"], r["reason"].split(":")[0]) for r in skipped["skipped"]} == {
        ("chat.jsonl", "line 601", "no assistant turn"),
        ("chat.jsonl", "line 602", "prompt longer than the context"),
        ("instructions.jsonl", "line 601", "empty answer"),
        ("instructions.jsonl", "line 602", "invalid JSON"),
    }
    assert s["data"]["skipped"] == skipped["counts"] and sum(skipped["counts"].values()) == 4
    assert s["trainable_params"] < 0.5 * s["params"]
    assert set(s["samples"]) == {"hola", "niño"} and s["samples"]["niño"].startswith("Respuesta: ")
    assert (out / "loss.png").stat().st_size > 1000 and (out / "logs" / "metrics.csv").exists()


def test_adapter_reloads_and_merged_export_matches_in_transformers(reversal):
    from transformers import AutoModelForCausalLM

    from models.lora import merged
    from models.policy import load_decoder, load_policy

    base_dir, out, _ = _paths(reversal)
    saved = {p.name for p in (out / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved, "peft's format"
    policy = load_policy(base_dir, out / "adapter").eval()
    again = load_policy(base_dir, out / "adapter").eval()
    x = torch.randint(0, 300, (3, 32))
    with torch.no_grad():
        logits = policy(x)[0]
        torch.testing.assert_close(again(x)[0], logits, rtol=0, atol=0)
        assert not torch.allclose(load_decoder(base_dir).eval()(x)[0], logits, atol=1e-3), "it changed"
        hf = AutoModelForCausalLM.from_pretrained(out / "export", dtype=torch.float32).eval()
        assert (hf(x).logits - logits).abs().max().item() < 1e-4
        ours = load_decoder(out / "export").eval()
        assert (ours(x)[0] - logits).abs().max().item() < 1e-4
        assert (merged(policy)(x)[0] - logits).abs().max().item() < 1e-4


def test_rerun_with_the_same_inputs_does_no_work(reversal, monkeypatch):
    import tasks.sft
    from tasks.sft import sft

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(tasks.sft, "run_training", no_training)
    m = reversal["manifest"]
    again = sft(reversal["storage"], _config(), reversal["base"], reversal["tok"], reversal["files"])
    assert again == m
    assert (
        m.inputs["pretrain"].key == reversal["base"].key and m.inputs["tokenizer"].key == reversal["tok"].key
    )
    assert [d["name"] for d in m.config["data"]] == ["chat.jsonl", "sharegpt.json", "instructions.jsonl"]

    # one changed byte of data, or one changed setting, is a new run
    changed = Path(reversal["files"][2])
    copy = changed.with_name("copy") / changed.name
    copy.parent.mkdir()
    copy.write_text(changed.read_text() + "\n")
    for cfg, files in (
        (_config(), [*reversal["files"][:2], str(copy)]),
        (_config(max_steps=601), reversal["files"]),
    ):
        with pytest.raises(AssertionError, match="training started"):
            sft(reversal["storage"], cfg, reversal["base"], reversal["tok"], files)


def _train(spec: dict, folder: Path, wait: bool = True, env: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps({**spec, "out_dir": str(folder)}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "models.sft", str(folder / "spec.json")],
        cwd=REPO,
        env={**os.environ, "GLOO_SOCKET_IFNAME": "lo", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if wait:
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
    return proc


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter(reversal, tmp_path):
    """Checkpoints hold the trainable weights only (the base comes from its export); a run killed with
    SIGKILL resumes from its newest checkpoint and ends with the adapter of an uninterrupted run."""
    import signal
    import time

    from safetensors.torch import load_file

    spec = json.loads((_paths(reversal)[1] / "spec.json").read_text())
    spec.update(max_steps=120, micro_batch=8, ckpt_every=10, val_every=60, samples={}, export=False)
    _train(spec, tmp_path / "whole")

    killed = tmp_path / "killed"
    proc = _train(spec, killed, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "step000010.ckpt").exists():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "killed before it finished"
    ckpt = torch.load(killed / "checkpoints" / "step000010.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k or "modules_to_save" in k for k in ckpt["state_dict"])

    _train(spec, killed)
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed["val_loss_start"] is None, "resumed from a checkpoint, not from the base"
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_two_nodes_on_loopback_match_one_process(reversal, tmp_path):
    """Each rank pads its own rows, yet the loss is weighted by the whole step's answer tokens: two
    processes (micro-batch 4 each) end with the adapter of one process (micro-batch 8)."""
    import socket

    from safetensors.torch import load_file

    spec = json.loads((_paths(reversal)[1] / "spec.json").read_text())
    spec.update(max_steps=20, micro_batch=8, ckpt_every=20, val_every=20, samples={}, export=False)
    _train(spec, tmp_path / "single")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    nodes = tmp_path / "nodes"
    procs = []
    for rank in (0, 1):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank), "LOCAL_RANK": "0"}
        procs.append(_train({**spec, "micro_batch": 4, "num_nodes": 2, "strategy": "ddp"}, nodes, False, env))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert json.loads((nodes / "metrics.json").read_text())["world_size"] == 2
    a = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    b = load_file(nodes / "adapter" / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


def test_adapter_round_trip_on_both_architectures(tmp_path, one_thread):
    """Save in peft format, load onto a fresh base: same logits; disabled adapter: the base's logits."""
    from models.export import export_hf
    from models.lora import LoraSettings, save_adapter
    from models.model import Decoder, ModelConfig
    from models.policy import load_policy

    for arch in ("gpt2", "llama"):
        torch.manual_seed(0)
        cfg = ModelConfig(arch=arch, vocab_size=64, context=16, n_layer=2, n_head=4, d_model=32)
        export_hf(Decoder(cfg), tmp_path / arch / "base")
        policy = load_policy(tmp_path / arch / "base", lora=LoraSettings(r=4, modules_to_save=["norm"]))
        for p in policy.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.05)  # as if trained: B != 0
        save_adapter(policy, tmp_path / arch / "adapter")
        fresh = load_policy(tmp_path / arch / "base", tmp_path / arch / "adapter")
        x = torch.randint(0, 64, (2, 16))
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(x)[0], policy.eval()(x)[0], rtol=0, atol=0)
            with policy.disable_adapter():
                reference = policy(x)[0]
            plain = load_policy(tmp_path / arch / "base").eval()(x)[0]
        torch.testing.assert_close(reference, plain, rtol=0, atol=0)
        assert not any(p.requires_grad for p in fresh.parameters()), "a loaded adapter is frozen"


def test_batched_replies_equal_one_at_a_time(reversal):
    from models.chat import ChatTemplate, generate_replies
    from models.policy import load_policy

    base_dir, out, tok_dir = _paths(reversal)
    template = ChatTemplate.from_file(tok_dir)
    policy = load_policy(base_dir, out / "adapter")
    convs = [[{"role": "user", "content": w}] for w in reversal["test"][:12]]
    together = generate_replies(policy, template, convs, max_new_tokens=16)
    alone = [generate_replies(policy, template, [c], max_new_tokens=16)[0] for c in convs]
    assert together == alone


def test_flow_artifacts_and_command(reversal, prefect_server, tmp_path):
    """The flow reuses the finished run and reports it in the UI; `forja sft --json` prints the manifest."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.finetune import sft_flow

    m = reversal["manifest"]
    store = reversal["storage"]
    again = sft_flow(_config(), store.root, reversal["base"], reversal["files"])
    assert again.key == m.key and again.created_at == m.created_at
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sft-report"]))
        )
    # other tests' fine-tuning runs report on the same server: this run's report names its folder
    ours = [a for a in arts if m.key in a.data]
    assert ours and "data:image/png;base64," in ours[0].data and "Respuesta" in ours[0].data

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"sft": _config().model_dump(mode="json", exclude={"data"})}))
    args = [
        "sft",
        "--config",
        str(recipe),
        "--storage",
        store.root,
        "--set",
        f"sft.base={m.inputs['pretrain'].url}",
    ]
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    cmd = [sys.executable, "-m", "flows.cli", *args]
    ok = subprocess.run(
        [*cmd, "--json", *(x for f in reversal["files"] for x in ("--input", f))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads(ok.stdout)["key"] == m.key


def test_no_usable_conversation_is_an_input_error(reversal, tmp_path):
    from tasks.errors import ForjaInputError
    from tasks.sft import sft

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"instruction": "Di algo.", "output": ""}\n{"messages": []}\n')
    with pytest.raises(ForjaInputError) as err:
        sft(reversal["storage"], _config(), reversal["base"], reversal["tok"], [str(empty)])
    assert "empty.jsonl (line 1): empty answer" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(ForjaInputError, match="sft.optim"):
        bad = _config(optim={"lr": 1e-3, "betas": 1})
        sft(reversal["storage"], bad, reversal["base"], reversal["tok"], reversal["files"])
