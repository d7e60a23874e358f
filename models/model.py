"""A decoder-only transformer in two flavours, GPT-2 and Llama, in one file.

gpt2:  token + learned position embeddings, pre-LayerNorm blocks, GELU MLP, biases.
llama: token embeddings, RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, no biases.

Both flavours use the same module names (`blocks.N.attn.q_proj`, `blocks.N.mlp.up_proj`, ...), so LoRA
target modules and checkpoints read the same whichever architecture a recipe picks. `models.export`
writes either one as a checkpoint that transformers loads as GPT2LMHeadModel or LlamaForCausalLM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (padding, masked prompts)


@dataclass
class ModelConfig:
    arch: Literal["gpt2", "llama"] = "gpt2"
    vocab_size: int = 4096
    context: int = 256  # max sequence length (positions)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention (llama); None = n_head
    d_model: int = 128
    mlp_hidden: int | None = None  # None: 4*d_model (gpt2), ~8/3*d_model rounded up to 32 (llama)
    dropout: float = 0.0
    bias: bool | None = None  # None: True for gpt2, False for llama
    tie_weights: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self):
        for f in ("dropout", "rope_theta", "norm_eps", "init_std"):
            try:  # YAML reads "1e-5" (no dot) as a string
                setattr(self, f, float(getattr(self, f)))
            except (TypeError, ValueError):
                raise ValueError(f"model.{f} must be a number, got {getattr(self, f)!r}") from None
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"model.arch must be 'gpt2' or 'llama', got {self.arch!r}")
        for f in ("vocab_size", "context", "n_layer", "n_head", "d_model", "n_kv_head", "mlp_hidden"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"model.{f} must be a positive integer, got {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"model.n_head ({self.n_head}) must be divisible by n_kv_head ({self.kv_heads})")
        if self.arch == "gpt2" and self.kv_heads != self.n_head:
            raise ValueError("model.n_kv_head: GPT-2 has no grouped-query attention; use arch 'llama'")
        if self.arch == "llama" and self.head_dim % 2:
            raise ValueError(
                f"rotary embeddings need an even head size, got d_model/n_head = {self.head_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for f in ("rope_theta", "norm_eps", "init_std"):
            if getattr(self, f) <= 0:
                raise ValueError(f"model.{f} must be > 0, got {getattr(self, f)}")

    # Resolved values of the fields that default to "depends on arch"; to_dict keeps the raw fields.
    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def use_bias(self) -> bool:
        return self.arch == "gpt2" if self.bias is None else self.bias

    @property
    def mlp_dim(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.arch == "gpt2":
            return 4 * self.d_model
        # SwiGLU has three matrices instead of two: 2/3 of 4*d keeps the parameter count of a GELU MLP.
        return 32 * math.ceil(8 * self.d_model / 3 / 32)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 even under autocast: the mean of squares overflows/underflows in half precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "llama":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.use_bias)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim) of the rotation angles, laid out for `rotate_half`."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # Pairs dimension i with i + head_dim/2 (not 2i with 2i+1): HF Llama's layout, so q/k export as-is.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache:
    """Keys and values of the positions seen so far, for every layer, room for `length` positions.

    Buffers are allocated on the first write, with the dtype and device of the keys (autocast-safe).
    `pos` is the number of positions stored; the model advances it after each forward.
    """

    def __init__(self, n_layer: int, length: int):
        self.length = length
        self.pos = 0
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is None:
            shape = (k.shape[0], k.shape[1], self.length, k.shape[3])
            self.k[layer] = k.new_zeros(shape)
            self.v[layer] = v.new_zeros(shape)
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, self.n_head * self.hd, bias=cfg.use_bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.use_bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.use_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.d_model, bias=cfg.use_bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if rope is not None:
            cos, sin = (t.to(q.dtype) for t in rope)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)
        mask, causal = None, T > 1
        if past and T > 1:
            # New queries sit at positions past..past+T-1; is_causal would align them to the top left.
            q_pos = torch.arange(past, past + T, device=x.device)
            mask = torch.arange(past + T, device=x.device)[None, :] <= q_pos[:, None]
            causal = False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            enable_gqa=self.n_kv != self.n_head,
        )
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.hd)
        return self.resid_drop(self.o_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.arch == "llama"
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=cfg.use_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=cfg.use_bias)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.d_model, bias=cfg.use_bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = F.gelu(self.up_proj(x), approximate="tanh")  # GPT-2's "gelu_new"
        return self.drop(self.down_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.arch == "gpt2" else None
        if cfg.arch == "llama":
            cos, sin = rope_tables(cfg.head_dim, cfg.context, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)
        # GPT-2: each block adds two residual branches; scaling their output layers keeps the
        # residual stream's variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init(self, m: nn.Module):
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        idx: torch.LongTensor,
        targets: torch.LongTensor | None = None,
        *,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (B, T, V) in fp32, mean cross-entropy over targets != -100 or None)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        limit = cache.length if cache is not None else self.cfg.context
        if start + T > limit:
            raise ValueError(f"sequence of {start + T} positions exceeds the model's context of {limit}")
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        else:
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.norm(x)).float()
        if targets is None:
            return logits, None
        # Sum / count instead of mean: a batch whose targets are all ignored gives 0, not NaN.
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return logits, loss / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (shared ones once). non_embedding leaves out the lookup tables (tok_emb, pos_emb)
        but keeps the LM head: with tied weights the shared matrix is counted once, as the head,
        because the head's matmul is real compute and the lookup is not."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if self.lm_head.weight is not self.tok_emb.weight:
                n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 * L * d * T.

        N = num_params(non_embedding=True); the second term is attention's QK^T and AV, counted over
        the whole T x T square (as PaLM does) although the causal mask makes half of it unused."""
        t = seq_len or self.cfg.context
        return 6.0 * self.num_params(True) + 12.0 * self.cfg.n_layer * self.cfg.d_model * t

    def param_groups(self, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
        """AdamW groups over the trainable parameters, each once.

        Decay: weight matrices (dim >= 2), including an untied LM head and LoRA matrices.
        No decay: norms, biases, and the embedding tables (tok_emb, also when tied to the head, and
        pos_emb): decoupled decay shrinks every row each step while rare tokens' rows get few
        gradients, so it would pull them toward zero. `decay_embeddings` decays them too (nanoGPT's
        choice: every tensor of dim >= 2)."""
        embeddings = set()
        if not decay_embeddings:
            embeddings.add(id(self.tok_emb.weight))
            if self.pos_emb is not None:
                embeddings.add(id(self.pos_emb.weight))
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.LongTensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.LongTensor:
        """Continue each row of idx (B, T); returns (B, T + generated). temperature 0 is greedy.

        Rows that emitted eos_id are padded with it; generation stops once every row has. The model
        sees at most the last `context` tokens: a KV cache serves until it is full, then each step
        recomputes the cropped window, so results equal full recomputation token for token.
        """
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(
                f"generate needs a (batch, time) prompt of at least one token, got {tuple(idx.shape)}"
            )
        if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
            raise ValueError("need temperature >= 0, top_k >= 1 and 0 < top_p <= 1")
        was_training = self.training
        self.eval()
        try:
            ctx = self.cfg.context
            out = idx
            done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
            cache: KVCache | None = KVCache(self.cfg.n_layer, ctx)
            logits, _ = self(out[:, -ctx:], cache=cache)
            for step in range(max_new_tokens):
                nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
                if eos_id is not None:
                    nxt = nxt.masked_fill(done, eos_id)
                    done |= nxt == eos_id
                out = torch.cat((out, nxt[:, None]), dim=1)
                if step == max_new_tokens - 1 or bool(done.all()):
                    break
                if cache is not None and cache.pos < ctx:
                    logits, _ = self(nxt[:, None], cache=cache)
                else:
                    cache = None
                    logits, _ = self(out[:, -ctx:])
        finally:
            self.train(was_training)
        return out


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """One token id per row of logits (B, V)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus: keep the most likely tokens until their mass reaches top_p; the first one always stays.
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
