"""The losses of preference tuning, as pure functions of tensors.

- `sequence_logps`: log-probability of each row's answer tokens under a model's logits.
- `dpo_loss`: Direct Preference Optimization (Rafailov et al., 2023), the sigmoid loss. The implicit reward
  of an answer is beta * (log pi(answer) - log pi_ref(answer)); the loss asks the chosen answer's reward to
  exceed the rejected one's.
- `bradley_terry_loss`: a reward model's pairwise loss, -log sigmoid(r_chosen - r_rejected).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.model import IGNORE_INDEX


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of log p(target) over the positions whose target is not IGNORE_INDEX: (B, T, V), (B, T) -> (B,).

    Summed, not averaged: DPO compares whole answers, and a per-token mean would let a longer answer's
    reward count for as much as a short one's."""
    nll = F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # 0 where ignored
    return -nll.sum(dim=-1)


@dataclass(frozen=True)
class PreferenceOutput:
    loss: torch.Tensor  # scalar, differentiable
    chosen_rewards: torch.Tensor  # (B,), detached
    rejected_rewards: torch.Tensor  # (B,), detached

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> torch.Tensor:
        """Share of pairs whose chosen answer has the higher reward (a tie counts as wrong)."""
        return (self.margins > 0).float().mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceOutput:
    """DPO's sigmoid loss from the sequence log-probs (B,) of the policy and the reference model.

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), averaged over the pairs. With
    `label_smoothing` e > 0 each label is taken as wrong with probability e (conservative DPO):
    -(1 - e) log sigmoid(beta x) - e log sigmoid(-beta x).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen = policy_chosen - reference_chosen.detach()
    rejected = policy_rejected - reference_rejected.detach()
    z = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return PreferenceOutput(losses.mean(), beta * chosen.detach(), beta * rejected.detach())


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, center_coef: float = 0.0
) -> PreferenceOutput:
    """-log sigmoid(r_c - r_r), averaged: the Bradley-Terry model's likelihood of the human choices.

    The loss sees only differences, so rewards may drift as a whole; `center_coef` adds
    coef * mean((r_c + r_r)^2) to keep them near zero, where an RL stage expects them."""
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return PreferenceOutput(losses.mean(), chosen_rewards.detach(), rejected_rewards.detach())
