"""A Bradley-Terry reward model: our Decoder with a scalar head. `python -m models.reward spec.json`.

The reward of (prompt, answer) is a linear head on the final hidden state (after the last norm) at the
answer's closing `<|end|>`: under causal attention that position has read the whole conversation. The
decoder trains through a LoRA adapter, the head fully; the loss is models.preference_loss's
`bradley_terry_loss` on the same pairs DPO uses.

Saved as a folder an RL stage reads with `load_reward_model(path)`: `export/` (the merged decoder and its
tokenizer), `reward_head.safetensors` and `reward.json` (pad id, context, mean and spread of the rewards
on held-out answers, for normalising).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from models.chat import ChatTemplate, Message, decoder_of
from models.curves import plot_preference_curves
from models.dpo import PreferenceMetrics, log_train
from models.pair_data import PairData
from models.posttrain import PolicyModule, PostTrainSpec, run, seed_everything
from models.preference_loss import PreferenceOutput, bradley_terry_loss

HEAD_FILE = "reward_head.safetensors"
INFO_FILE = "reward.json"


@dataclass(kw_only=True)
class RewardSpec(PostTrainSpec):
    pad_id: int = 3
    center_coef: float = 0.01


def final_hidden(model, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, d): the last norm's output at each row's last real token (rows right-padded)."""
    decoder = decoder_of(model)
    captured: list[torch.Tensor] = []
    # A hook, not a second forward: the Decoder's trunk stays the one code path (gpt2 and llama).
    handle = decoder.norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(ids)
    finally:
        handle.remove()
    return captured[-1][torch.arange(len(ids), device=ids.device), lengths - 1]


def new_head(d_model: int) -> nn.Linear:
    head = nn.Linear(d_model, 1)
    nn.init.normal_(head.weight, 0.0, 1 / math.sqrt(d_model + 1))
    nn.init.zeros_(head.bias)
    return head


class LitReward(PolicyModule):
    def __init__(
        self,
        base: str,
        lora: dict,
        optim: dict,
        center_coef: float = 0.01,
        tokenizer_dir: str | None = None,
    ):
        super().__init__(base, lora, optim, None, None, tokenizer_dir)
        self.center_coef = center_coef
        self.head = new_head(self.decoder.cfg.d_model)
        self.val_rewards: list[float] = []

    def rewards(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(final_hidden(self.policy, ids, lengths)).squeeze(-1).float()

    def preference(self, batch) -> PreferenceOutput:
        ids, _, lengths = batch
        r = self.rewards(ids, lengths)
        n = len(r) // 2
        return bradley_terry_loss(r[:n], r[n:], self.center_coef)

    def configure_optimizers(self):
        o = self.optim
        groups = self.decoder.param_groups(o.weight_decay, o.decay_embeddings)
        groups.append({"params": list(self.head.parameters()), "weight_decay": 0.0})
        return o.lightning(groups)

    def training_step(self, batch, batch_idx):
        out = self.preference(batch)
        log_train(self, out)
        return out.loss

    def on_validation_epoch_start(self):
        self._val = PreferenceMetrics(self.device)
        self.val_rewards = []

    def validation_step(self, batch, batch_idx):
        out = self.preference(batch)
        self._val.add(out)
        self.val_rewards += out.chosen_rewards.tolist() + out.rejected_rewards.tolist()

    def on_validation_epoch_end(self):
        if self._val.pairs:
            for name, value in self._val.means().items():
                if name in ("loss", "accuracy", "margin"):
                    self.log(f"val/{name}", value, prog_bar=name != "margin", sync_dist=True)


def save_reward_files(module: LitReward, out: Path, stats: dict) -> None:
    from safetensors.torch import save_file

    head = {k: v.detach().cpu().contiguous() for k, v in module.head.state_dict().items()}
    save_file(head, str(out / HEAD_FILE))
    (out / INFO_FILE).write_text(json.dumps(stats, indent=2) + "\n")


def train(spec: RewardSpec) -> dict:
    seed_everything(spec.seed)
    optim = {**spec.optim, "max_steps": spec.max_steps}
    module = LitReward(spec.base, spec.lora, optim, spec.center_coef, spec.tokenizer_dir)
    data = PairData(spec.data_dir, spec.micro_batch, spec.accumulate, spec.pad_id, spec.seed)
    has_val = (Path(spec.data_dir) / "val" / "chosen.npz").exists()
    metrics = run(spec, module, data, has_val=has_val)
    if not metrics:
        return metrics
    out = Path(spec.out_dir)
    rewards = torch.tensor(module.val_rewards or [0.0], dtype=torch.float64)
    info = {
        "format": "forja-reward-model/1",
        "pad_id": spec.pad_id,
        "context": module.decoder.cfg.context,
        "mean": float(rewards.mean()),
        "std": float(rewards.std()) if len(rewards) > 1 else 1.0,
        "val_accuracy": metrics.get("val_accuracy"),
    }
    save_reward_files(module, out, info)
    metrics.update(reward_mean=info["mean"], reward_std=info["std"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_preference_curves(metrics["history"], out / "curves.png", "Reward model (Bradley-Terry)")
    return metrics


Prompt = str | Sequence[Message]  # a user message, or the conversation so far


class RewardModel:
    """Scores (prompt, answer) pairs: `rm([(prompt, answer), ...]) -> [reward, ...]`; higher is better.

    `normalize=True` (per call or by default at load) subtracts the held-out mean and divides by the spread
    recorded at training time. A conversation longer than the context keeps its last tokens: the end of the
    answer matters more to its score than the start of the prompt."""

    def __init__(self, decoder, head: nn.Linear, template: ChatTemplate, info: dict, normalize: bool = False):
        self.decoder, self.head, self.template, self.info = decoder.eval(), head.eval(), template, info
        self.normalize = normalize

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def to(self, device) -> RewardModel:
        self.decoder.to(device)
        self.head.to(device)
        return self

    def encode(self, prompt: Prompt, answer: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        ids = self.template.prompt(messages) + self.template.encode_text(answer) + [self.template.end_id]
        return ids[-self.info["context"] :]

    @torch.no_grad()
    def __call__(
        self, pairs: Sequence[tuple[Prompt, str]], batch_size: int = 32, normalize: bool | None = None
    ) -> list[float]:
        normalize = self.normalize if normalize is None else normalize
        encoded = [self.encode(p, a) for p, a in pairs]
        scores: list[float] = []
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start : start + batch_size]
            ids = torch.full((len(rows), max(map(len, rows))), self.info["pad_id"], dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
            lengths = torch.tensor([len(r) for r in rows])
            hidden = final_hidden(self.decoder, ids.to(self.device), lengths.to(self.device))
            scores += self.head(hidden).squeeze(-1).float().tolist()
        if normalize:
            scores = [(s - self.info["mean"]) / (self.info["std"] or 1.0) for s in scores]
        return scores

    def score(self, prompt: Prompt, answer: str) -> float:
        return self([(prompt, answer)])[0]


def load_reward_model(path: str | Path, device: str | None = None, normalize: bool = False) -> RewardModel:
    """The reward model a reward_model stage saved (its folder, local), as a callable on (prompt, answer)
    pairs."""
    from safetensors.torch import load_file

    from models.policy import load_decoder

    path = Path(path)
    if not (path / INFO_FILE).is_file() or not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a reward model folder: it needs {INFO_FILE}, {HEAD_FILE} and export/"
        )
    info = json.loads((path / INFO_FILE).read_text())
    decoder = load_decoder(path / "export")
    head = new_head(decoder.cfg.d_model)
    head.load_state_dict(load_file(str(path / HEAD_FILE)))
    model = RewardModel(decoder, head, ChatTemplate.from_file(path / "export"), info, normalize)
    return model.to(device) if device else model


def main(argv: list[str] | None = None) -> None:
    from models.train import run_cli

    run_cli(__doc__, "reward model", RewardSpec.load, train, argv)


if __name__ == "__main__":
    main()
