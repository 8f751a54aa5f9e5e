"""PPO's pieces as tensor functions over [rows, tokens] arrays of the completion tokens (token t is action t, taken in
the state of the tokens before it), `mask` true on a row's completion tokens. Each mirrors trl's PPOTrainer (trl 1.12,
trl/experimental/ppo/ppo_trainer.py), checked in tests/align/test_trl_parity.py; one difference: trl adds the score
one position after a completion that stopped early (its `padding_mask_p1`), gpt3d on the completion's last token.
"""
from __future__ import annotations

import torch

from gpt3d.parallel import comm
from gpt3d.parallel.context import Group


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()


def kl_penalised_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                         kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, kl): per token -kl_coef * (log pi - log pi_ref) (trl's k1 estimator), plus the reward model's score
    on each completion's last token."""
    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    last = mask.sum(dim=1).long() - 1
    rewards[torch.arange(len(rewards), device=rewards.device), last] += scores
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation; the value after a completion's last token is 0."""
    values = values * mask
    steps = rewards.shape[1]
    last, reversed_advantages = 0.0, []
    for t in reversed(range(steps)):
        next_values = values[:, t + 1] if t < steps - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        reversed_advantages.append(last)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages, advantages + values


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, group: Group | None = None) -> torch.Tensor:
    """(values - mean) / sqrt(unbiased variance + 1e-8) over the masked entries of every rank of `group` (the
    data-parallel replicas: the whole global batch), 0 outside the mask."""
    mask = mask.to(values.dtype)
    sums = torch.stack([(values * mask).sum(), mask.sum()])
    if group is not None:
        comm.all_reduce(sums, group, "ppo_whiten_mean")
    mean, count = sums[0] / sums[1], sums[1]
    squares = ((values - mean) ** 2 * mask).sum()
    if group is not None:
        comm.all_reduce(squares, group, "ppo_whiten_var")
    variance = squares / count * (count / (count - 1))
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(clipped surrogate loss, fraction of tokens where the clip is active)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(0.5 * clipped squared error to the returns, fraction of tokens where the clip is active)."""
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)
