"""Pretraining: two nodes equal one process, a killed run resumes exactly, the export loads elsewhere."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

VOCAB = 96


def _token_shards(folder: Path, n_tokens: int = 60_000, seed: int = 0) -> Path:
    """Shards of a small learnable language: noisy arithmetic sequences, documents ended by eos (2)."""
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < n_tokens:
        start, step, length = rng.integers(8, VOCAB), rng.integers(1, 5), rng.integers(20, 200)
        doc = (8 + (start + step * np.arange(length)) % (VOCAB - 8)).astype(np.uint16)
        docs.append(np.append(doc, 2).astype(np.uint16))
        total += len(docs[-1])
    shards = []
    for split, part in (("train", docs[: int(len(docs) * 0.9)]), ("val", docs[int(len(docs) * 0.9) :])):
        tokens = np.concatenate(part)
        (folder / split).mkdir(parents=True, exist_ok=True)
        tokens.tofile(folder / split / "00000.bin")
        shards.append(
            {
                "path": f"{split}/00000.bin",
                "split": split,
                "documents": len(part),
                "tokens": len(tokens),
                "bytes": 3 * len(tokens),
            }
        )
    totals = {s["split"]: {k: s[k] for k in ("documents", "tokens", "bytes")} for s in shards}
    index = {"dtype": "uint16", "vocab_size": VOCAB, "eos_id": 2, "shards": shards, "totals": totals}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return _token_shards(tmp_path_factory.mktemp("tokens"))


def _spec(shards: Path, out: Path, **over) -> Path:
    spec = {
        "shards_dir": str(shards),
        "out_dir": str(out),
        "model": {
            "arch": "llama",
            "vocab_size": VOCAB,
            "n_layer": 2,
            "n_head": 4,
            "n_kv_head": 2,
            "d_model": 64,
            "context": 32,
        },
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5},
        "micro_batch": 8,
        "max_steps": 16,
        "val_every": 8,
        "val_windows": 16,
        "ckpt_every": 4,
        "accelerator": "cpu",
        "export": False,
        **over,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _env(**extra) -> dict:
    # gloo on the loopback interface: the hostname may resolve to an address peers cannot reach
    return {**os.environ, "FORJA_PROGRESS": "0", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo", **extra}


def _train(spec: Path, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "models.train", str(spec)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_match_one_process(shards, tmp_path):
    single = tmp_path / "single"
    trained = _train(_spec(shards, single, micro_batch=8))
    assert trained["val_loss"] < 0.9 * np.log(VOCAB), "it trained"

    nodes = tmp_path / "nodes"
    spec = _spec(shards, nodes, micro_batch=4, num_nodes=2, strategy="ddp")
    port = str(_free_port())
    procs = [
        _train(
            spec,
            _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank), LOCAL_RANK="0"),
            wait=False,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert json.loads((nodes / "metrics.json").read_text())["world_size"] == 2, "a real two-process DDP run"

    a, b = _weights(single), _weights(nodes)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


def test_killed_run_resumes_to_the_same_loss(shards, tmp_path):
    whole = tmp_path / "whole"
    reference = _train(_spec(shards, whole, max_steps=24))

    killed = tmp_path / "killed"
    spec = _spec(shards, killed, max_steps=24)
    proc = _train(spec, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / "checkpoints").glob("step000008.ckpt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the run must be killed before it finished"
    assert list((killed / "checkpoints").glob("*.ckpt"))

    resumed = _train(spec)
    assert resumed["steps"] == reference["steps"] == 24
    assert abs(resumed["train_loss"] - reference["train_loss"]) < 1e-5
    assert abs(resumed["val_loss"] - reference["val_loss"]) < 1e-5
    for name, tensor in _weights(whole).items():
        torch.testing.assert_close(tensor, _weights(killed)[name], atol=1e-6, rtol=1e-5, msg=name)


def test_training_reduces_loss_and_writes_outputs(shards, tmp_path):
    out = tmp_path / "run"
    metrics = _train(_spec(shards, out, max_steps=100, val_every=50))
    assert metrics["val_loss"] < 0.5 * np.log(VOCAB), "it learns the arithmetic sequences"
    saved = json.loads((out / "metrics.json").read_text())
    vals = [r["val/loss"] for r in saved["history"] if "val/loss" in r]
    assert len(vals) >= 2 and vals[-1] < vals[0]
    assert saved["tokens_per_s"] > 0 and (out / "loss.png").stat().st_size > 1000
    assert (out / "logs" / "metrics.csv").exists() and list((out / "logs" / "tb").glob("events.*"))


def test_export_loads_in_transformers_with_the_same_logits(shards, tmp_path):
    from transformers import AutoModelForCausalLM

    from models.model import Decoder, ModelConfig

    for arch, extra in (("gpt2", {}), ("llama", {"n_kv_head": 2})):
        out = tmp_path / arch
        spec = json.loads(_spec(shards, out).read_text())
        model_cfg = {**spec["model"], "arch": arch, **extra}
        model_cfg.pop("n_kv_head", None) if arch == "gpt2" else None
        _train(_spec(shards, out, model=model_cfg, max_steps=8, export=True))
        state = {k.removeprefix("model."): v for k, v in _weights(out).items()}
        ours = Decoder(ModelConfig(**model_cfg))
        ours.load_state_dict(state)
        hf = AutoModelForCausalLM.from_pretrained(out / "export").eval()
        assert type(hf).__name__ == ("GPT2LMHeadModel" if arch == "gpt2" else "LlamaForCausalLM")
        x = torch.randint(0, VOCAB, (2, 32))
        with torch.no_grad():
            diff = (hf(x).logits - ours.eval()(x)[0]).abs().max().item()
        assert diff < 1e-4, (arch, diff)
        assert load_file(out / "export" / "model.safetensors")


def test_two_torchrun_launches_match_one_process(shards, tmp_path):
    """The same spec under TorchElastic, as a cluster runs it: one torchrun per node."""
    single = tmp_path / "single"
    _train(_spec(shards, single, micro_batch=8, max_steps=8))
    nodes = tmp_path / "torchrun"
    spec = _spec(shards, nodes, micro_batch=4, max_steps=8, num_nodes=2, strategy="ddp")
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "models.train",
                str(spec),
            ],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert json.loads((nodes / "metrics.json").read_text())["world_size"] == 2
    a, b = _weights(single), _weights(nodes)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_fsdp_without_gpus_names_the_fix(shards, tmp_path):
    proc = _train(_spec(shards, tmp_path / "fsdp", strategy="fsdp"), wait=False)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "pretrain.strategy=fsdp needs CUDA GPUs" in out and "strategy=ddp" in out
    assert "Traceback" not in out
