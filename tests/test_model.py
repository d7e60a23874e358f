"""The decoder (gpt2 and llama): shapes, causality, KV-cache generation, sampling, LoRA, HF export."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.export import export_hf, to_hf_state_dict
from models.model import Decoder, KVCache, ModelConfig, sample_next

V = 97


def tiny(arch: str = "gpt2", **kw) -> Decoder:
    kw = {"vocab_size": V, "context": 24, "n_layer": 2, "n_head": 4, "d_model": 32, **kw}
    torch.manual_seed(0)
    model = Decoder(ModelConfig(arch=arch, **kw)).eval()
    with torch.no_grad():  # norms and biases start at 1 and 0: move them so a wrong export would show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


ARCHS = [
    pytest.param({"arch": "gpt2"}, id="gpt2"),
    pytest.param({"arch": "llama", "n_kv_head": 2}, id="llama-gqa"),
]


def greedy_recompute(model: Decoder, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: no cache, the whole (cropped) sequence through the model for every token."""
    for _ in range(n):
        logits, _ = model(idx[:, -model.cfg.context :])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


# --- config ---------------------------------------------------------------------------------------------


def test_config_round_trip_and_defaults():
    cfg = ModelConfig(arch="llama", d_model=128, n_head=4, n_kv_head=2)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert ModelConfig.from_dict(d) == cfg
    assert cfg.mlp_dim == 352 and cfg.mlp_dim % 32 == 0  # ceil(8/3 * 128 / 32) * 32
    assert cfg.use_bias is False and cfg.kv_heads == 2 and cfg.head_dim == 32
    g = ModelConfig()
    assert g.mlp_dim == 4 * g.d_model and g.use_bias is True and g.kv_heads == g.n_head
    assert ModelConfig.from_dict({"norm_eps": "1e-6"}).norm_eps == 1e-6  # YAML's string floats


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"d_model": 130, "n_head": 4}, "divisible by n_head"),
        ({"arch": "llama", "n_head": 4, "n_kv_head": 3}, "divisible by n_kv_head"),
        ({"n_kv_head": 2}, "grouped-query"),
        ({"arch": "bert"}, "'gpt2' or 'llama'"),
        ({"n_layer": 0}, "positive integer"),
        ({"dropout": 1.0}, "dropout"),
        ({"arch": "llama", "d_model": 36, "n_head": 4, "n_kv_head": 4}, "even head size"),
    ],
)
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**kw)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="n_embd"):
        ModelConfig.from_dict({"n_embd": 64})


# --- forward --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", ARCHS)
def test_shapes_and_loss(kw):
    model = tiny(**kw)
    idx = torch.randint(0, V, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, V) and logits.dtype == torch.float32 and loss is None
    targets = torch.randint(0, V, (3, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(V)) < 0.5  # small init: close to uniform
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # -100 targets are ignored: the loss is the mean over the rest only.
    masked = targets.clone()
    masked[:, :10] = -100
    _, loss_masked = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 10:].reshape(-1, V), targets[:, 10:].reshape(-1))
    assert torch.allclose(loss_masked, expected, atol=1e-5)
    _, loss_none = model(idx, torch.full_like(targets, -100))
    assert loss_none.item() == 0.0
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 25, dtype=torch.long))


@pytest.mark.parametrize("kw", ARCHS)
def test_causal(kw):
    model = tiny(**kw)
    idx = torch.randint(0, V, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6, rtol=0)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3


@pytest.mark.parametrize("kw", ARCHS)
def test_cache_in_chunks_matches_full_forward(kw):
    """Several new tokens against a non-empty cache need an offset causal mask."""
    model = tiny(**kw)
    idx = torch.randint(0, V, (2, 20))
    full, _ = model(idx)
    cache = KVCache(model.cfg.n_layer, model.cfg.context)
    parts, start = [], 0
    for n in (3, 5, 1, 7, 4):
        logits, _ = model(idx[:, start : start + n], cache=cache)
        parts.append(logits)
        start += n
    assert cache.pos == 20
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="context"):
        model(idx[:, :5], cache=cache)


def test_gqa_equals_attention_with_repeated_kv_heads():
    gqa = tiny("llama", n_kv_head=2)
    assert gqa.blocks[0].attn.k_proj.weight.shape == (2 * 8, 32)
    mha = Decoder(ModelConfig(**{**gqa.cfg.to_dict(), "n_kv_head": 4})).eval()
    sd = gqa.state_dict()
    for k, w in sd.items():
        if k.endswith(("k_proj.weight", "v_proj.weight")):  # kv head j serves query heads 2j and 2j+1
            sd[k] = w.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(sd)
    idx = torch.randint(0, V, (2, 20))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)


def test_tied_weights_share_storage():
    tied = tiny("gpt2")
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert tied.lm_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    untied = tiny("llama", tie_weights=False)
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    d, n_layer = 32, 2
    # Tied: the shared matrix counts once, as the head; pos_emb is left out.
    assert tied.num_params(True) == tied.num_params(False) - tied.cfg.context * d
    assert untied.num_params(True) == untied.num_params(False) - V * d
    assert tied.flops_per_token(10) == 6 * tied.num_params(True) + 12 * n_layer * d * 10
    assert tied.flops_per_token() == tied.flops_per_token(tied.cfg.context)


@pytest.mark.parametrize("kw", [*ARCHS, pytest.param({"arch": "gpt2", "tie_weights": False}, id="untied")])
def test_param_groups_cover_every_parameter_once(kw):
    model = tiny(**kw)
    groups = model.param_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[i].endswith(("bias", "norm.weight")) and "emb" not in names[i] for i in decayed)
    assert id(model.blocks[0].attn.q_proj.weight) in decayed
    assert (id(model.lm_head.weight) in decayed) == (not model.cfg.tie_weights)
    torch.optim.AdamW(groups, lr=1e-3)
    # nanoGPT's choice: every matrix decays, the (tied) embedding tables included
    all_2d = {id(p) for p in model.parameters() if p.dim() >= 2}
    groups = model.param_groups(0.1, decay_embeddings=True)
    assert {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]} == all_2d
    assert id(model.tok_emb.weight) in all_2d


def test_bf16_autocast_and_train_mode_kept():
    model = tiny("llama", n_kv_head=2).train()
    idx = torch.randint(0, V, (2, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
        loss.backward()
        out = model.generate(idx, 16, temperature=0.8, top_k=5)
    assert logits.dtype == torch.float32 and torch.isfinite(loss)
    assert out.shape == (2, 26) and model.training  # generate runs in eval mode, then restores


# --- generation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [*ARCHS, pytest.param({"arch": "llama"}, id="llama")])
@pytest.mark.parametrize("prompt_len", [1, 7, 20])
def test_cached_greedy_equals_full_recompute(kw, prompt_len):
    # 20 + 12 tokens passes the context of 24: the cache fills and generation carries on cropped.
    model = tiny(**kw)
    idx = torch.randint(0, V, (2, prompt_len))
    out = model.generate(idx, 12, temperature=0)
    assert out.shape == (2, prompt_len + 12)
    assert torch.equal(out, greedy_recompute(model, idx, 12))


def test_prompt_longer_than_context_is_cropped():
    model = tiny("llama")
    idx = torch.randint(0, V, (1, 30))
    out = model.generate(idx, 4, temperature=0)
    assert torch.equal(out[:, :30], idx)
    assert torch.equal(out, greedy_recompute(model, idx, 4))


def test_sampling_limits():
    model = tiny("llama")
    idx = torch.randint(0, V, (2, 5))
    greedy = model.generate(idx, 8, temperature=0)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(model.generate(idx, 8, temperature=1.0, top_k=1, generator=g), greedy)
    assert torch.equal(model.generate(idx, 8, temperature=1.0, top_p=1e-6, generator=g), greedy)
    a = model.generate(idx, 8, temperature=0.9, generator=torch.Generator().manual_seed(3))
    b = model.generate(idx, 8, temperature=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # Direct: samples stay inside the top-k set and inside the nucleus.
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(500, 1)
    top3 = sample_next(logits, 1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(top3.tolist()) == {0, 1, 2}
    # probs ~ .64 .23 .09 ...: the nucleus of 0.8 is {0, 1}
    nucleus = sample_next(logits, 1.0, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(nucleus.tolist()) == {0, 1}
    free = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert len(set(free.tolist())) > 3
    with pytest.raises(ValueError):
        model.generate(idx, 2, top_p=0.0)


def test_generation_stops_at_eos():
    model = tiny("gpt2")
    torch.manual_seed(5)
    idx = torch.randint(0, V, (2, 4))
    free = model.generate(idx, 15, temperature=0)
    eos = int(free[0, 4 + 2])  # row 0's third new token
    first = int((free[0, 4:] == eos).nonzero()[0]) + 4
    row0 = model.generate(idx[:1], 15, temperature=0, eos_id=eos)
    assert row0.shape[1] == first + 1 and torch.equal(row0, free[:1, : first + 1])
    both = model.generate(idx, 15, temperature=0, eos_id=eos)
    assert torch.equal(both[0, : first + 1], free[0, : first + 1])
    assert (both[0, first:] == eos).all()  # a finished row is padded with eos
    hits = (free[1, 4:] == eos).nonzero()
    end = int(hits[0]) + 5 if len(hits) else free.shape[1]
    assert both.shape[1] == max(first + 1, end)
    assert torch.equal(both[1, :end], free[1, :end])


# --- LoRA and export ------------------------------------------------------------------------------------


def test_peft_lora_wraps_and_runs():
    from peft import LoraConfig, get_peft_model

    model = tiny("llama", n_kv_head=2)
    idx = torch.randint(0, V, (2, 10))
    base_logits, _ = model(idx)
    lora = get_peft_model(model, LoraConfig(target_modules=["q_proj", "v_proj"], r=4))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len([n for n in trainable if "q_proj" in n]) == 2 * model.cfg.n_layer
    logits, loss = lora(idx, idx)
    assert torch.allclose(logits, base_logits, atol=1e-6)  # lora_B starts at zero
    loss.backward()
    groups = lora.param_groups(0.1)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    moved, _ = lora(idx)
    assert (moved - base_logits).abs().max() > 1e-3
    out = lora.generate(idx, 5, temperature=0)
    assert out.shape == (2, 15) and torch.equal(out, greedy_recompute(model, idx, 5))
    # Export merges the adapters (into a copy): the HF weights give the adapted logits.
    _, sd = to_hf_state_dict(lora)
    assert not any("lora" in k for k in sd)
    q0 = model.blocks[0].attn.q_proj
    merged = q0.base_layer.weight + q0.get_delta_weight("default")
    assert torch.allclose(sd["model.layers.0.self_attn.q_proj.weight"], merged, atol=1e-6)
    assert hasattr(model.blocks[0].attn.q_proj, "lora_A")  # the model itself keeps its adapters


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"arch": "gpt2"}, id="gpt2-tied"),
        pytest.param({"arch": "gpt2", "tie_weights": False, "bias": False}, id="gpt2-untied-nobias"),
        pytest.param(
            {"arch": "llama", "n_kv_head": 2, "tie_weights": False, "rope_theta": 500.0}, id="llama-gqa"
        ),
        pytest.param({"arch": "llama"}, id="llama-tied"),
    ],
)
def test_export_loads_in_transformers(kw, tmp_path):
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel, LlamaForCausalLM

    model = tiny(**kw)
    tok = tmp_path / "tok"
    tok.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (tok / name).write_bytes(name.encode())
    out = export_hf(model, tmp_path / "hf", tokenizer_dir=tok, extra={"bos_id": 1, "eos_id": 2, "pad_id": 0})
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == name.encode()
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(hf, GPT2LMHeadModel if kw["arch"] == "gpt2" else LlamaForCausalLM)
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (1, 2, 0)
    assert hf.config.tie_word_embeddings == model.cfg.tie_weights
    head, emb = hf.get_output_embeddings().weight, hf.get_input_embeddings().weight
    assert (head.data_ptr() == emb.data_ptr()) == model.cfg.tie_weights
    assert sum(p.numel() for p in hf.parameters()) >= model.num_params(False)
    idx = torch.randint(0, V, (2, model.cfg.context))
    with torch.no_grad():
        theirs = hf(idx).logits
    ours, _ = model(idx)
    assert (theirs - ours).abs().max().item() < 1e-4


def test_export_requires_tokenizer_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        export_hf(tiny("gpt2"), tmp_path / "hf", tokenizer_dir=tmp_path)
