"""Write a Decoder as a Hugging Face checkpoint: model.safetensors + config.json (+ tokenizer files).

gpt2 loads as GPT2LMHeadModel, llama as LlamaForCausalLM, with the same logits as ours.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.model import Decoder

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
_ALIASES = {"bos_id": "bos_token_id", "eos_id": "eos_token_id", "pad_id": "pad_token_id"}


def _unwrap(model) -> Decoder:
    """A LoRA-wrapped model (peft) is exported with its adapters merged, into a copy."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    if not isinstance(model, Decoder):
        raise TypeError(f"expected a Decoder (or a peft model around one), got {type(model).__name__}")
    return model


def _gpt2(model: Decoder) -> tuple[dict, dict]:
    cfg = model.cfg
    p = {k: v.detach() for k, v in model.named_parameters(remove_duplicate=False)}

    def bias(name: str, size: int) -> torch.Tensor:
        # HF GPT-2 always has biases: a bias-free model exports zeros, which changes nothing.
        return p.get(name, torch.zeros(size, dtype=p["tok_emb.weight"].dtype))

    d = cfg.d_model
    sd = {"transformer.wte.weight": p["tok_emb.weight"], "transformer.wpe.weight": p["pos_emb.weight"]}
    for i in range(cfg.n_layer):
        a, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            sd[h + theirs + ".weight"] = p[a + ours + ".weight"]
            sd[h + theirs + ".bias"] = bias(a + ours + ".bias", d)
        # HF's Conv1D stores weights as (in, out), the transpose of nn.Linear; q, k, v are one fused layer.
        qkv = ("q_proj", "k_proj", "v_proj")
        sd[h + "attn.c_attn.weight"] = torch.cat([p[f"{a}attn.{n}.weight"].t() for n in qkv], dim=1)
        sd[h + "attn.c_attn.bias"] = torch.cat([bias(f"{a}attn.{n}.bias", d) for n in qkv])
        sd[h + "attn.c_proj.weight"] = p[a + "attn.o_proj.weight"].t()
        sd[h + "attn.c_proj.bias"] = bias(a + "attn.o_proj.bias", d)
        sd[h + "mlp.c_fc.weight"] = p[a + "mlp.up_proj.weight"].t()
        sd[h + "mlp.c_fc.bias"] = bias(a + "mlp.up_proj.bias", cfg.mlp_dim)
        sd[h + "mlp.c_proj.weight"] = p[a + "mlp.down_proj.weight"].t()
        sd[h + "mlp.c_proj.bias"] = bias(a + "mlp.down_proj.bias", d)
    sd["transformer.ln_f.weight"] = p["norm.weight"]
    sd["transformer.ln_f.bias"] = bias("norm.bias", d)
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context,
        "n_embd": d,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.mlp_dim,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
    }
    return config, sd


def _llama(model: Decoder) -> tuple[dict, dict]:
    cfg = model.cfg
    p = {k: v.detach() for k, v in model.named_parameters(remove_duplicate=False)}
    sd = {"model.embed_tokens.weight": p["tok_emb.weight"], "model.norm.weight": p["norm.weight"]}
    renames = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "attn": "self_attn"}
    for name, t in p.items():
        if name.startswith("blocks."):
            _, i, mod, rest = name.split(".", 3)
            sd[f"model.layers.{i}.{renames.get(mod, mod)}.{rest}"] = t
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "attention_bias": cfg.use_bias,
        "mlp_bias": cfg.use_bias,
        "attention_dropout": cfg.dropout,
        # transformers < 5 reads rope_theta, 5.x reads rope_parameters; each ignores the other.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
    }
    return config, sd


def to_hf_state_dict(model: Decoder) -> tuple[dict, dict]:
    """(HF config dict, state dict with HF names). A tied head is left out: tie_word_embeddings says so."""
    model = _unwrap(model)
    config, sd = (_gpt2 if model.cfg.arch == "gpt2" else _llama)(model)
    if not model.cfg.tie_weights:
        sd["lm_head.weight"] = model.lm_head.weight.detach()
    config["tie_word_embeddings"] = model.cfg.tie_weights
    config["torch_dtype"] = str(model.tok_emb.weight.dtype).removeprefix("torch.")
    # The HF classes default to GPT-2's / Llama's own token ids, which mean nothing in our vocabulary.
    config.update(dict.fromkeys(TOKEN_IDS))
    config["use_cache"] = True
    # safetensors wants contiguous, unshared CPU tensors.
    return config, {k: v.to("cpu").contiguous().clone() for k, v in sd.items()}


def export_hf(
    model: Decoder,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    extra: dict | None = None,
) -> Path:
    """Write model.safetensors, config.json and generation_config.json to out_dir; copy the tokenizer.

    extra: merged into config.json; bos_token_id / eos_token_id / pad_token_id (or bos_id, eos_id,
    pad_id) also go to generation_config.json so `generate` in transformers stops at eos.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, sd = to_hf_state_dict(model)
    extra = {_ALIASES.get(k, k): v for k, v in (extra or {}).items()}
    config.update(extra)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {k: config[k] for k in TOKEN_IDS if config.get(k) is not None}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer_dir is not None:
        src = Path(tokenizer_dir)
        if not (src / "tokenizer.model").is_file():
            raise FileNotFoundError(f"no tokenizer.model in {src}: pass the tokenizer stage's folder")
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
    return out
