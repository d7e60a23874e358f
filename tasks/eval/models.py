"""The model interface every evaluation uses, and its two implementations.

`LanguageModel` asks a backend for four things: encode, decode, the logits of a batch, and an incremental
forward with a key/value cache. On those it builds, once for both backends, what the benchmarks need:
log-likelihoods of continuations and greedy generation, batched. `ForjaModel` runs our own Decoder
(from an export folder or a training checkpoint) with its SentencePiece tokenizer; `HFModel` runs any
`transformers` causal LM with its own tokenizer. A Forja export gives the same numbers through either.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.errors import ForjaInputError
from tasks.eval.source import ModelSource

Progress = Callable[[int], None]  # called with the number of items just finished


@dataclass(frozen=True)
class LogLikelihood:
    logprob: float  # sum of log p(token) over the continuation's tokens, in nats
    tokens: int


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    return getattr(torch, dtype)


def start_tokens(adds_bos: bool, bos_id: int | None, eos_id: int | None) -> list[int]:
    """What every text is preceded by: the BOS a tokenizer adds by default, else EOS (a model trained on
    documents joined by EOS, as ours are, sees a new document start after it), else nothing."""
    if adds_bos and bos_id is not None:
        return [bos_id]
    return [eos_id] if eos_id is not None else []


class LanguageModel(ABC):
    backend: str
    context: int  # the most positions the model attends to
    eos_id: int | None
    prefix: list[int]
    device: torch.device

    # ---- what a backend provides

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of text, without special tokens."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) float32 logits, causal (right padding does not matter)."""

    @abstractmethod
    def start(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Forward a (B, T) prompt, keeping a key/value cache: (last position's logits (B, V), state)."""

    @abstractmethod
    def step(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One more token per row (B, 1) after `state`: (logits (B, V), new state)."""

    @abstractmethod
    def num_params(self) -> int: ...

    # ---- built on top, the same for every backend

    def continuation_tokens(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation as the model reads them together: the joint encoding
        split after the context's own tokens (a merge across the boundary falls back to separate ones)."""
        ctx, whole = self.encode(context), self.encode(context + continuation)
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, self.encode(continuation)

    @torch.inference_mode()
    def loglikelihoods(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 16,
        progress: Progress | None = None,
    ) -> list[LogLikelihood]:
        """log p(continuation | context) for each (context, continuation) pair.

        Each sequence is the start tokens + context + continuation, cut from the left to the context
        window; batches group sequences of similar length, padded on the right."""
        seqs = []
        for context, continuation in pairs:
            ctx, cont = self.continuation_tokens(context, continuation)
            full = (self.prefix + ctx + cont)[-(self.context + 1) :]
            seqs.append((full, min(len(cont), len(full) - 1)))
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        out: list[LogLikelihood | None] = [None] * len(seqs)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(seqs[i][0]) for i in idx) - 1
            batch = torch.zeros((len(idx), width), dtype=torch.long)
            rows, cols, targets = [], [], []
            for r, i in enumerate(idx):
                full, n = seqs[i]
                batch[r, : len(full) - 1] = torch.tensor(full[:-1])
                start = len(full) - 1 - n  # input positions that predict the continuation
                rows += [r] * n
                cols += range(start, start + n)
                targets += full[len(full) - n :]
            logits = self.logits(batch.to(self.device))
            at_rows, at_cols = (torch.tensor(v, device=logits.device) for v in (rows, cols))
            picked = logits[at_rows, at_cols].float().log_softmax(-1)
            lp = picked.gather(1, torch.tensor(targets, device=picked.device)[:, None])[:, 0].double().cpu()
            at = 0
            for i in idx:
                n = seqs[i][1]
                out[i] = LogLikelihood(float(lp[at : at + n].sum()), n)
                at += n
            if progress:
                progress(len(idx))
        return out  # type: ignore[return-value]

    def generation_budget(self, max_new_tokens: int) -> tuple[int, int]:
        """(new tokens, prompt tokens) that fit the context window: at most half of it is generated, and
        longer prompts lose their beginning."""
        new = max(1, min(max_new_tokens, self.context // 2))
        return new, self.context - new

    @torch.inference_mode()
    def greedy(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int = 16,
        progress: Progress | None = None,
    ) -> list[str]:
        """The greedy continuation of each prompt, cut at the first stop string, EOS or max_new_tokens.

        Prompts of a batch have different lengths but need no padding: every row advances one position
        per step, reading its own prompt token while it has one and its argmax afterwards, so positions
        line up and one key/value cache serves the whole batch."""
        new_max, room = self.generation_budget(max_new_tokens)
        blank = [self.eos_id if self.eos_id is not None else 0]  # an empty prompt still needs a position
        encoded = [(self.prefix + self.encode(p))[-room:] or blank for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        texts: list[str] = [""] * len(prompts)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            for i, text in zip(
                idx, self._greedy_batch([encoded[i] for i in idx], new_max, stop), strict=True
            ):
                texts[i] = text
            if progress:
                progress(len(idx))
        return texts

    def _greedy_batch(self, rows: list[list[int]], max_new: int, stop: Sequence[str]) -> list[str]:
        shortest = min(len(r) for r in rows)
        pad = self.eos_id if self.eos_id is not None else 0
        new: list[list[int]] = [[] for _ in rows]
        texts = [""] * len(rows)
        done = [False] * len(rows)
        logits, state = self.start(torch.tensor([r[:shortest] for r in rows], device=self.device))
        pos = shortest
        while True:
            best = logits.argmax(-1).tolist()
            feed = []
            for i, row in enumerate(rows):
                if pos < len(row):  # still reading its prompt
                    feed.append(row[pos])
                    continue
                if not done[i]:
                    token = best[i]
                    if token == self.eos_id:
                        done[i] = True
                    else:
                        new[i].append(token)
                        texts[i], hit = cut_at_stop(self.decode(new[i]), stop)
                        done[i] = hit or len(new[i]) >= max_new
                feed.append(new[i][-1] if new[i] and not done[i] else pad)
            if all(done):
                return texts
            logits, state = self.step(torch.tensor(feed, device=self.device)[:, None], state)
            pos += 1


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


# ---------------------------------------------------------------- Forja's own Decoder


class ForjaModel(LanguageModel):
    """models.model.Decoder with the SentencePiece tokenizer of the tokenizer stage."""

    backend = "forja"

    def __init__(self, model, tokenizer_dir: str | Path, device: torch.device, dtype: torch.dtype):
        import sentencepiece as spm

        folder = Path(tokenizer_dir)
        self.sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        settings = {}
        if (folder / "tokenizer_config.json").is_file():
            settings = json.loads((folder / "tokenizer_config.json").read_text())
        bos, eos = self.sp.bos_id(), self.sp.eos_id()
        self.eos_id = eos if eos >= 0 else None
        self.prefix = start_tokens(
            bool(settings.get("add_bos_token", False)), bos if bos >= 0 else None, self.eos_id
        )
        self.device = device
        self.model = model.to(device=device, dtype=dtype).eval()
        self.context = model.cfg.context

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)[0]

    def start(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        from models.model import KVCache

        cache = KVCache(self.model.cfg.n_layer, self.context)
        return self.model(ids, cache=cache)[0][:, -1], cache

    def step(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.model(ids, cache=state)[0][:, -1], state

    def num_params(self) -> int:
        return self.model.num_params(non_embedding=False)


# ---------------------------------------------------------------- any transformers causal LM


class HFModel(LanguageModel):
    """transformers' AutoModelForCausalLM + AutoTokenizer, from any local model folder."""

    backend = "transformers"

    def __init__(self, folder: str | Path, device: torch.device, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # long texts for bits per byte are meant to exceed max length
        hf_logging.disable_progress_bar()  # the forja command draws its own
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        self.device = device
        cfg = self.model.config
        self.context = int(
            getattr(cfg, "max_position_embeddings", None)
            or getattr(cfg, "n_positions", None)
            or min(self.tok.model_max_length, 2048)
        )
        self.eos_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else cfg.eos_token_id
        plain, with_specials = self.tok.encode("a", add_special_tokens=False), self.tok.encode("a")
        adds_bos = (
            self.tok.bos_token_id is not None and with_specials[:1] == [self.tok.bos_token_id] != plain[:1]
        )
        self.prefix = start_tokens(adds_bos, self.tok.bos_token_id, self.eos_id)
        # transformers 5 renamed past_key_values to cache (argument and output); older ones have the former
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits.float()

    def start(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=ids, use_cache=True)
        return out.logits[:, -1].float(), out[self.cache_arg]

    def step(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=ids, use_cache=True, **{self.cache_arg: state})
        return out.logits[:, -1].float(), out[self.cache_arg]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


# ---------------------------------------------------------------- choosing and opening


def open_model(source: ModelSource, backend: str, device: str = "auto", dtype: str = "auto") -> LanguageModel:
    """The model of `source` behind the chosen backend; unreadable models are input errors."""
    from models.load import UnsupportedModel, load_checkpoint, load_hf_folder

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if backend == "transformers":
        try:
            return HFModel(source.path, dev, dt)
        except (OSError, ValueError, KeyError) as e:
            raise ForjaInputError(
                f"{source.path}: transformers cannot load this model or its tokenizer ({e}); "
                "pass a folder with config.json, weights and tokenizer files"
            ) from None
    if source.tokenizer is None:
        raise ForjaInputError(
            f"{source.path}: no tokenizer.model (SentencePiece) for Forja's backend; "
            "use --set eval.backend=transformers, or evaluate the run's export/ folder"
        )
    try:
        model = load_checkpoint(source.path) if source.kind == "checkpoint" else load_hf_folder(source.path)
    except UnsupportedModel as e:
        raise ForjaInputError(
            f"{source.path}: Forja's Decoder cannot represent this model ({e}); "
            "use --set eval.backend=transformers"
        ) from None
    except (OSError, KeyError, RuntimeError) as e:
        raise ForjaInputError(f"{source.path}: cannot read the model ({type(e).__name__}: {e})") from None
    return ForjaModel(model, source.tokenizer, dev, dt)
