"""RL with verifiable rewards, GRPO (group relative policy optimisation): `python -m models.grpo spec.json`.

Each step takes P prompts, samples G completions of each from the current policy (temperature, top-k,
top-p from the spec), scores them with the reward functions (`models.rewards`), standardises the rewards
within each prompt's group into advantages and takes `updates_per_batch` optimiser steps on the clipped
surrogate against the log-probabilities at sampling time, plus `kl_beta` times the k3 KL to the reference.
The reference is the base itself: the same weights with the LoRA adapter disabled, no second copy
(`models.grpo_loss` has the arithmetic). Completions end at `<|end|>` or EOS; tokens after are masked.

Validation answers the held-out prompts greedily and logs their mean reward (and each reward function's),
before training, every `val_every` steps and at the end. The run writes what every post-training run does
(`models.posttrain.write_outputs`: adapter, merged export, metrics, logs) plus `curves.png` (reward,
accuracy, KL, loss) and the held-out answers of each evaluation in `samples.json`.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.chat import decoder_of
from models.grpo_data import PromptData
from models.grpo_loss import completion_mask, group_advantages, grpo_loss, token_logprobs
from models.posttrain import PolicyModule, PostTrainSpec, seed_everything, write_outputs
from models.rewards import Rewards
from models.train import (
    _leave_process_group,
    make_trainer,
    read_history,
    resume_checkpoint,
)

EOS_ID = 2  # the tokenizer stage's </s>: a completion also ends there


@dataclass(kw_only=True)
class GRPOSpec(PostTrainSpec):
    group_size: int = 8  # G completions per prompt
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 64
    clip_eps: float = 0.2
    kl_beta: float = 0.0
    updates_per_batch: int = 1  # optimiser steps on each batch of completions
    adv_eps: float = 1e-4
    rewards: list[dict] = field(default_factory=lambda: [{"name": "answer"}])
    forward_batch: int = 64  # sequences per forward pass (memory); gradients are the same for any value
    val_batch: int = 64
    val_examples: int = 8  # held-out answers kept per evaluation


@dataclass
class Rollout:
    """One batch of sampled completions, ready for the loss."""

    inputs: torch.Tensor  # (N, W) prompt + completion, right-padded, without the last token
    targets: torch.Tensor  # (N, W) the next token at each position
    positions: torch.Tensor  # (N, T) where each completion token is predicted in `inputs`
    mask: torch.Tensor  # (N, T) 1 on completion tokens up to the stop token
    advantages: torch.Tensor  # (N,)
    old_logp: torch.Tensor  # (N, T) log-probs at sampling time
    ref_logp: torch.Tensor | None  # (N, T) log-probs under the reference (adapter disabled)
    stats: dict[str, float]


class LitGRPO(PolicyModule):
    def __init__(self, spec: GRPOSpec):
        if not spec.tokenizer_dir:
            raise ValueError("GRPO needs tokenizer_dir: completions are decoded to text for the rewards")
        optim = {**spec.optim, "max_steps": spec.max_steps * spec.updates_per_batch}
        super().__init__(spec.base, spec.lora, optim, spec.adapter, None, spec.tokenizer_dir)
        self.automatic_optimization = False  # several optimiser steps per sampled batch
        self.spec = spec
        self.rewards = Rewards(spec.rewards)
        self.stop_ids = [self.template.end_id, EOS_ID]
        self.context = self.decoder.cfg.context

    # --- sampling -------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, prompts: list[list[int]], copies: int, temperature: float, seed: int
    ) -> list[list[list[int]]]:
        """`copies` completions (max_new_tokens ids each, padded after the stop) of every prompt.

        Prompts of one length are generated together (no padding inside a prompt)."""
        s = self.spec
        decoder = decoder_of(self.policy)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out: list[list[list[int]]] = [[] for _ in prompts]
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        for length, members in sorted(by_length.items()):
            idx = torch.tensor(
                [prompts[i] for i in members for _ in range(copies)], dtype=torch.long, device=self.device
            )
            gen = decoder.generate(
                idx,
                s.max_new_tokens,
                temperature=temperature,
                top_k=s.top_k if temperature else None,
                top_p=s.top_p if temperature else None,
                eos_id=self.template.end_id,
                generator=generator,
            )[:, length:]
            if gen.size(1) < s.max_new_tokens:  # every row stopped early
                pad = gen.new_full((gen.size(0), s.max_new_tokens - gen.size(1)), self.template.end_id)
                gen = torch.cat((gen, pad), dim=1)
            rows = gen.tolist()
            for k, i in enumerate(members):
                out[i] = rows[k * copies : (k + 1) * copies]
        return out

    def completion_text(self, ids: list[int]) -> str:
        kept = []
        for t in ids:
            if t in self.stop_ids:
                break
            kept.append(t)
        return self.template.decode(kept)

    def score(self, records: list[dict], completions: list[list[list[int]]]) -> tuple[list, dict, list]:
        """(total rewards, rewards per function, texts), flat in prompt-major order."""
        prompts, texts, refs = [], [], []
        for r, comps in zip(records, completions, strict=True):
            for c in comps:
                prompts.append(r["prompt"])
                texts.append(self.completion_text(c))
                refs.append(r.get("reference"))
        totals, parts = self.rewards.score(prompts, texts, refs)
        return totals, parts, texts

    # --- log-probabilities ------------------------------------------------------------------------------

    def sequence_logprobs(self, r: Rollout, rows: slice) -> torch.Tensor:
        """log p of each completion token of rows `rows` under the policy as it is now."""
        logits, _ = self.policy(r.inputs[rows])
        full = token_logprobs(logits, r.targets[rows])
        return full.gather(1, r.positions[rows])

    @torch.no_grad()
    def rollout(self, records: list[dict], batch_index: int) -> Rollout:
        s, G = self.spec, self.spec.group_size
        started = time.perf_counter()
        completions = self.sample(
            [r["ids"] for r in records], G, s.temperature, s.seed * 1_000_003 + batch_index
        )
        totals, parts, _ = self.score(records, completions)
        rewards = torch.tensor(totals, dtype=torch.float32, device=self.device)
        advantages = group_advantages(rewards, G, s.adv_eps)

        comp = torch.tensor([c for cs in completions for c in cs], dtype=torch.long, device=self.device)
        mask = completion_mask(comp, self.stop_ids)
        lengths = [len(r["ids"]) for r in records for _ in range(G)]
        T = comp.size(1)
        width = max(lengths) + T - 1
        inputs = torch.full((len(lengths), width), self.template.pad_id, dtype=torch.long, device=self.device)
        targets = torch.zeros_like(inputs)
        positions = torch.empty((len(lengths), T), dtype=torch.long, device=self.device)
        flat_prompts = [r["ids"] for r in records for _ in range(G)]
        for n, (p, length) in enumerate(zip(flat_prompts, lengths, strict=True)):
            seq = torch.cat((torch.tensor(p, dtype=torch.long, device=self.device), comp[n]))
            inputs[n, : length + T - 1] = seq[:-1]
            targets[n, : length + T - 1] = seq[1:]
            positions[n] = torch.arange(length - 1, length - 1 + T, device=self.device)
        r = Rollout(inputs, targets, positions, mask, advantages, torch.empty(0), None, {})
        was_training = self.policy.training
        self.policy.eval()
        r.old_logp = self._chunked(r)
        if s.kl_beta > 0:
            with self.policy.disable_adapter():
                r.ref_logp = self._chunked(r)
        self.policy.train(was_training)

        grouped = rewards.view(-1, G)
        r.stats = {
            "reward": rewards.mean().item(),
            "reward_std": grouped.std(dim=1, unbiased=False).mean().item(),
            "uniform_groups": (grouped.std(dim=1, unbiased=False) == 0).float().mean().item(),
            "completion_tokens": (mask.sum() / mask.size(0)).item(),
            "rollout_s": time.perf_counter() - started,
            "tokens_per_s": float(mask.sum().item()) / max(time.perf_counter() - started, 1e-9),
            **{f"reward_{name}": sum(v) / len(v) for name, v in parts.items()},
        }
        if "answer" in parts:
            r.stats["accuracy"] = r.stats["reward_answer"]
        return r

    def _chunked(self, r: Rollout) -> torch.Tensor:
        n, step = r.inputs.size(0), self.spec.forward_batch
        return torch.cat([self.sequence_logprobs(r, slice(i, i + step)) for i in range(0, n, step)])

    # --- training -----------------------------------------------------------------------------------

    def training_step(self, batch: list[dict], batch_idx: int):
        s = self.spec
        r = self.rollout(batch, self.global_step // s.updates_per_batch)
        opt, sched = self.optimizers(), self.lr_schedulers()
        total_tokens = r.mask.sum().clamp(min=1.0)
        n = r.inputs.size(0)
        for _ in range(s.updates_per_batch):
            opt.zero_grad()
            sums = torch.zeros(4, device=self.device)  # loss, policy, kl, clipped (token sums)
            for i in range(0, n, s.forward_batch):
                rows = slice(i, i + s.forward_batch)
                parts = grpo_loss(
                    self.sequence_logprobs(r, rows),
                    r.old_logp[rows],
                    r.advantages[rows],
                    r.mask[rows],
                    s.clip_eps,
                    r.ref_logp[rows] if r.ref_logp is not None else None,
                    s.kl_beta,
                )
                share = parts.tokens / total_tokens  # token-level mean over the whole batch
                self.manual_backward(parts.loss * share)
                sums += (
                    torch.stack([parts.loss.detach(), parts.policy, parts.kl, parts.clip_fraction]) * share
                )
            if s.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=s.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()
        loss, policy, kl, clipped = sums.tolist()
        metrics = {
            "train/loss": loss,
            "train/policy_loss": policy,
            "train/kl": kl,
            "train/clip_fraction": clipped,
            "train/lr": opt.param_groups[0]["lr"],
            **{f"train/{k}": v for k, v in r.stats.items()},
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch))
        self.log("train/reward_mean", r.stats["reward"], prog_bar=True, on_step=True, on_epoch=False)

    # --- validation ------------------------------------------------------------------------------------

    def on_validation_epoch_start(self):
        self._val = {"n": 0, "total": 0.0, **{name: 0.0 for name in self.rewards.names}}
        self._examples: list[dict] = []

    def validation_step(self, batch: list[dict], batch_idx: int):
        completions = self.sample([r["ids"] for r in batch], 1, 0.0, 0)
        totals, parts, texts = self.score(batch, completions)
        self._val["n"] += len(totals)
        self._val["total"] += sum(totals)
        for name, values in parts.items():
            self._val[name] += sum(values)
        room = self.spec.val_examples - len(self._examples)
        for r, text, total in list(zip(batch, texts, totals, strict=True))[: max(room, 0)]:
            self._examples.append(
                {"prompt": r["prompt"], "completion": text, "reference": r.get("reference"), "reward": total}
            )

    def on_validation_epoch_end(self):
        n = self._val["n"]
        if not n:
            return
        metrics = {"val/reward": self._val["total"] / n}
        metrics.update({f"val/reward_{name}": self._val[name] / n for name in self.rewards.names})
        if "answer" in self.rewards.names:
            metrics["val/accuracy"] = metrics["val/reward_answer"]
        self.log_dict(metrics, prog_bar=False, sync_dist=True)
        if self.global_rank == 0 and not self.trainer.sanity_checking:
            self.samples.append(
                {"step": self.global_step, "reward": metrics["val/reward"], "samples": self._examples}
            )


CURVES = (
    ("train/reward", "val/reward", "mean reward"),
    ("train/accuracy", "val/accuracy", "accuracy"),
    ("train/kl", None, "KL to the reference (k3)"),
    ("train/loss", None, "loss"),
)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    for ax, (train_key, val_key, title) in zip(axes.flat, CURVES, strict=True):
        train = [(r["step"], r[train_key]) for r in history if train_key in r]
        if train:
            ax.plot(*zip(*train, strict=True), label="sampled (training)", alpha=0.7)
        val = [(r["step"], r[val_key]) for r in history if val_key and val_key in r]
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="held out (greedy)")
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        if train or val:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(spec: GRPOSpec) -> dict:
    if spec.accumulate != 1:
        raise SystemExit("GRPO takes no gradient accumulation: raise prompts per step instead")
    seed_everything(spec.seed)
    module = LitGRPO(spec)
    mu = spec.updates_per_batch
    data = PromptData(spec.data_dir, spec.micro_batch, spec.seed, spec.val_batch, lambda step: step // mu)
    has_val = (Path(spec.data_dir) / "val.jsonl").exists()
    # manual optimisation: gradients are clipped in the step; Lightning counts optimiser steps
    trainer = make_trainer(
        spec,
        [],
        updates_per_batch=mu,
        gradient_clip_val=None,
        val_check_interval=spec.val_every,
        limit_val_batches=None if has_val else 0,
        log_every_n_steps=1,
    )
    resume = resume_checkpoint(Path(spec.out_dir) / "checkpoints")
    start = {}
    if has_val and resume is None:
        start = trainer.validate(module, datamodule=data, verbose=False)[0]
    started = time.perf_counter()
    with warnings.catch_warnings():
        # checkpoints hold the weights after each step's updates: what resuming at the next step needs
        warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    final = trainer.validate(module, datamodule=data, verbose=False)[0] if has_val else {}
    _leave_process_group()
    if trainer.global_rank != 0:
        return {}
    metrics = write_outputs(spec, module, start, final, trainer.world_size, seconds)
    out = Path(spec.out_dir)
    history = read_history(out / "logs" / "metrics.csv")
    if not start:  # a resumed run: the evaluation before training is the first one logged
        start = next(
            ({k: v for k, v in r.items() if k.startswith("val/")} for r in history if "val/reward" in r), {}
        )
    metrics.update({f"{k.replace('/', '_')}_start": v for k, v in start.items()})
    metrics["optimizer_steps"] = spec.max_steps * mu
    rates = sorted(r["train/tokens_per_s"] for r in history if r.get("train/tokens_per_s"))
    metrics["tokens_per_s"] = rates[len(rates) // 2] if rates else None  # generated tokens per second
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves(history, out / "curves.png")
    return metrics


def main(argv: list[str] | None = None) -> None:
    from models.train import run_cli

    run_cli(__doc__, "GRPO", GRPOSpec.load, train, argv)


if __name__ == "__main__":
    main()
