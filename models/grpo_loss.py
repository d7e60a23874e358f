"""The arithmetic of GRPO as pure functions: group-normalised advantages, the completion mask, per-token
log-probabilities, the k3 KL estimate and the clipped policy loss.

For each prompt the policy samples G completions; each completion's advantage is its reward standardised
within its group, `(r - mean) / (std + eps)`: better than its siblings is positive, worse is negative, and
a group whose completions all scored the same teaches nothing (all zeros). Every completion token carries
its completion's advantage. The loss is PPO's clipped surrogate against the log-probabilities the tokens
had when they were sampled, plus, optionally, `beta` times the k3 estimate of KL(policy || reference)
(Schulman's `exp(ref - pi) - (ref - pi) - 1`, unbiased and never negative). It is normalised per token:
summed over every completion token of the batch and divided by their number, so long completions weigh
what their tokens weigh (not more per token, as a per-sequence mean would make short ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean) / (std + eps) within consecutive groups of `group_size` rewards (population std).

    `rewards` is flat, (P * G,), each prompt's G completions next to each other; so is the result."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"need a flat tensor of P x {group_size} rewards, got shape {tuple(rewards.shape)}")
    grouped = rewards.float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=False)
    return ((grouped - mean) / (std + eps)).view(-1)


def completion_mask(completions: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """1.0 on every generated token up to and including the first stop token (`<|end|>`, EOS), 0 after.

    completions: (N, T) generated ids (rows that stopped early are padded by the generator)."""
    stops = torch.zeros_like(completions, dtype=torch.bool)
    for s in stop_ids:
        stops |= completions == s
    # stops strictly before position t: the token at t comes after the end
    before = torch.cumsum(stops.int(), dim=1) - stops.int()
    return (before == 0).float()


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position: logits (N, T, V), targets (N, T) -> (N, T). Padding targets may be any
    valid id; the mask decides what counts."""
    return -F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) on tokens sampled from the policy:
    exp(ref - pi) - (ref - pi) - 1, which is >= 0 and 0 where the two agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor  # what backward() sees
    policy: torch.Tensor  # the clipped surrogate part (token mean)
    kl: torch.Tensor  # mean k3 KL per completion token (0 without a reference)
    clip_fraction: torch.Tensor  # share of tokens whose ratio the clip cut off
    tokens: torch.Tensor  # completion tokens in the batch


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> LossParts:
    """The GRPO loss of one batch. logp, old_logp, ref_logp, mask: (N, T) over completion positions;
    advantages: (N,), one per completion.

    Per token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * k3(pi, ref), ratio =
    exp(logp - old_logp); summed over the masked tokens and divided by their count."""
    mask = mask.float()
    tokens = mask.sum()
    denom = tokens.clamp(min=1.0)
    adv = advantages.float()[:, None]
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    surrogate = -torch.minimum(unclipped, clipped)
    policy = (surrogate * mask).sum() / denom
    kl = torch.zeros((), device=logp.device)
    if ref_logp is not None:
        kl = (k3_kl(logp, ref_logp) * mask).sum() / denom
    loss = policy + kl_beta * kl if kl_beta else policy
    with torch.no_grad():
        cut = ((clipped < unclipped).float() * mask).sum() / denom
    return LossParts(loss, policy.detach(), kl.detach(), cut, tokens.detach())
