"""Read a Decoder back: from a Hugging Face folder (what `models.export.export_hf` writes, or any GPT-2 /
Llama checkpoint our architecture can represent exactly) or from a Lightning training checkpoint.

The inverse of `models.export`: same names, same transposes, so export then load is the identity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.model import Decoder, ModelConfig


class UnsupportedModel(ValueError):
    """The folder holds a model our Decoder cannot represent exactly."""


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise UnsupportedModel(what)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig for a transformers config.json (GPT-2 or Llama), or UnsupportedModel."""
    kind = hf.get("model_type")
    tie = bool(hf.get("tie_word_embeddings", True))
    if kind == "gpt2":
        _require(
            hf.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
            f"GPT-2 activation {hf.get('activation_function')!r} (ours is the tanh GELU)",
        )
        _require(hf.get("scale_attn_weights", True), "GPT-2 without scaled attention")
        _require(not hf.get("scale_attn_by_inverse_layer_idx"), "GPT-2 with per-layer attention scaling")
        _require(not hf.get("reorder_and_upcast_attn"), "GPT-2 with reordered attention")
        return ModelConfig(
            arch="gpt2",
            vocab_size=hf["vocab_size"],
            context=hf.get("n_positions", 1024),
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            d_model=hf["n_embd"],
            mlp_hidden=hf.get("n_inner") or 4 * hf["n_embd"],
            bias=True,  # HF GPT-2 always has biases (an exported bias-free model carries zeros)
            tie_weights=tie,
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            init_std=hf.get("initializer_range", 0.02),
        )
    if kind == "llama":
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        _require(rope.get("rope_type", rope.get("type", "default")) == "default", f"rope scaling {rope}")
        _require(hf.get("hidden_act", "silu") == "silu", f"Llama activation {hf.get('hidden_act')!r}")
        heads, d = hf["num_attention_heads"], hf["hidden_size"]
        _require(hf.get("head_dim") in (None, d // heads), "Llama head_dim other than hidden/heads")
        bias = bool(hf.get("attention_bias", False))
        _require(bool(hf.get("mlp_bias", False)) == bias, "attention and MLP biases that differ")
        return ModelConfig(
            arch="llama",
            vocab_size=hf["vocab_size"],
            context=hf.get("max_position_embeddings", 2048),
            n_layer=hf["num_hidden_layers"],
            n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or heads,
            d_model=d,
            mlp_hidden=hf["intermediate_size"],
            bias=bias,
            tie_weights=tie,
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            init_std=hf.get("initializer_range", 0.02),
        )
    raise UnsupportedModel(f"model_type {kind!r} (Forja's Decoder is GPT-2 or Llama)")


def _gpt2_state(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    d = cfg.d_model
    out = {"tok_emb.weight": sd["wte.weight"], "pos_emb.weight": sd["wpe.weight"]}
    for i in range(cfg.n_layer):
        h, a = f"h.{i}.", f"blocks.{i}."
        for theirs, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[f"{a}{ours}.weight"], out[f"{a}{ours}.bias"] = (
                sd[h + theirs + ".weight"],
                sd[h + theirs + ".bias"],
            )
        # Conv1D keeps (in, out): transpose back to nn.Linear; c_attn is q, k, v side by side.
        for n, w, b in zip(
            ("q_proj", "k_proj", "v_proj"),
            sd[h + "attn.c_attn.weight"].split(d, dim=1),
            sd[h + "attn.c_attn.bias"].split(d),
            strict=True,
        ):
            out[f"{a}attn.{n}.weight"], out[f"{a}attn.{n}.bias"] = w.t(), b
        for theirs, ours in (
            ("attn.c_proj", "attn.o_proj"),
            ("mlp.c_fc", "mlp.up_proj"),
            ("mlp.c_proj", "mlp.down_proj"),
        ):
            out[f"{a}{ours}.weight"] = sd[f"{h}{theirs}.weight"].t()
            out[f"{a}{ours}.bias"] = sd[f"{h}{theirs}.bias"]
    out["norm.weight"], out["norm.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    return out


def _llama_state(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renames = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm", "self_attn": "attn"}
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    for name, t in sd.items():
        if name.startswith("model.layers."):
            _, _, i, mod, rest = name.split(".", 4)
            out[f"blocks.{i}.{renames.get(mod, mod)}.{rest}"] = t
    return out


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def load_hf_folder(folder: str | Path) -> Decoder:
    """A Decoder with the weights of a transformers GPT-2 / Llama folder (config.json + safetensors)."""
    folder = Path(folder)
    hf = json.loads((folder / "config.json").read_text())
    cfg = config_from_hf(hf)
    sd = _read_safetensors(folder)
    state = (_gpt2_state if cfg.arch == "gpt2" else _llama_state)(cfg, sd)
    if not cfg.tie_weights:
        state["lm_head.weight"] = sd["lm_head.weight"]
    model = Decoder(cfg)
    wanted = {k for k in model.state_dict() if not (cfg.tie_weights and k == "lm_head.weight")}
    missing, unexpected = wanted - set(state), set(state) - wanted
    if missing or unexpected:
        raise UnsupportedModel(
            f"weights do not match the config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False)
    return model.eval()


def load_checkpoint(path: str | Path) -> Decoder:
    """A Decoder from a Lightning checkpoint of `models.train` (hyperparameters carry the model config)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ModelConfig.from_dict(ckpt["hyper_parameters"]["model"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}  # saved from a compiled model
    model = Decoder(cfg)
    model.load_state_dict(state)
    return model.eval()
