"""From the last stage's rollout passes to what the PPO loss needs: KL-penalised rewards, GAE advantages (whitened
over the global batch) and returns, and the rollout metrics, per micro-batch."""
from __future__ import annotations

import torch

from gpt3d.config.align import PPOConfig
from gpt3d.parallel.context import Group

from . import losses
from .objective import Rollout


def completion_span(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [rows, width] of each row's completion tokens, valid [rows, width]): a row's labelled positions
    are one contiguous run."""
    start = mask.float().argmax(dim=1)
    steps = torch.arange(width, device=mask.device)
    index = (start.unsqueeze(1) + steps).clamp(max=mask.shape[1] - 1)
    return index, steps < mask.sum(dim=1, keepdim=True)


def attach_rollouts(batches: list, policy: list[torch.Tensor], reference: list[torch.Tensor],
                    scores: list[torch.Tensor], weight: float, ppo: PPOConfig, group: Group | None) -> None:
    """Set each micro-batch's `Rollout` from the policy's [3, rows, seq_len] log-probabilities, values and entropies, the
    reference's log-probabilities and the reward model's scores; `group`: the data-parallel replicas."""
    spans = [completion_span(b.labels >= 0, ppo.max_new_tokens) for b in batches]

    def completions(tensors):  # [rows, seq_len] per micro-batch -> [all rows, max_new_tokens], 0 past the end
        return torch.cat([x.gather(1, index) * valid for x, (index, valid) in zip(tensors, spans)])
    logps, values = completions([p[0] for p in policy]), completions([p[1] for p in policy])
    entropy = completions([p[2] for p in policy])
    ref = completions(reference)
    mask = torch.cat([valid for _, valid in spans]).float()
    score = torch.cat(scores)
    rewards, kl = losses.kl_penalised_rewards(logps, ref, score, mask, ppo.kl_coef)
    advantages, returns = losses.gae(rewards, values, mask, ppo.gamma, ppo.lam)
    advantages = losses.masked_whiten(advantages, mask, group)
    at = 0
    for batch, (index, valid), p in zip(batches, spans, policy):
        rows = slice(at, at + len(index))
        at += len(index)

        def place(x):  # back to [rows, seq_len]
            return torch.zeros_like(p[0]).scatter_add(1, index, x[rows] * valid)
        m = mask[rows]
        stats = {"reward": score[rows].mean(), "kl": kl[rows].sum(1).mean(),
                 "entropy": (entropy[rows] * m).sum() / m.sum(), "length": m.sum(1).mean()}
        batch.align = Rollout(p[0], p[1], place(advantages), place(returns), weight, stats)
