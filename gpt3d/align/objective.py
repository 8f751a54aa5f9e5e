"""What the last pipeline stage computes for PPO: the rollout statistics (no gradient) and the PPO-ptx loss.

Tensors are [rows, seq_len] over packed rollout rows; position t carries the log-probability of its label (the next
token, a completion token or ignored) and the value of the state at t (the value head on the final hidden state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from gpt3d.config.align import PPOConfig
from gpt3d.config.finetune import VALUE_HEAD
from gpt3d.finetune.logprobs import full_sequence, token_entropy, token_logprobs
from gpt3d.finetune.losses import masked_mean_nll

from .losses import policy_loss, value_loss


@dataclass
class Rollout:
    """A micro-batch's rollouts as the PPO loss needs them ([rows, seq_len], aligned with the labels)."""
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    weight: float  # (PPO + ptx micro-batches) / PPO micro-batches: the mean over micro-batches gives eq. 2
    stats: dict = field(default_factory=dict)  # reward, kl, entropy, length: means over the micro-batch


@dataclass
class Pretraining:
    weight: float  # ptx_coef * (PPO + ptx micro-batches) / ptx micro-batches


def policy_logps(stage, hidden: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[label]: the head has no bias, so scaling the hidden state scales the logits."""
    return token_logprobs(stage, hidden if temperature == 1.0 else hidden / temperature, labels)


def values_of(stage, hidden: torch.Tensor) -> torch.Tensor:
    return stage.task_heads[VALUE_HEAD](full_sequence(stage, hidden)).squeeze(-1).float()


def make_rollout_stats(temperature: float) -> Callable:
    def rollout_stats(stage, hidden, batch) -> torch.Tensor:
        """[3, rows, seq_len]: the policy's log-probabilities, values and entropies (of logits / temperature) at
        rollout time."""
        scaled = hidden if temperature == 1.0 else hidden / temperature
        return torch.stack([token_logprobs(stage, scaled, batch.labels), values_of(stage, hidden),
                            token_entropy(stage, scaled)]).detach()
    return rollout_stats


def make_reference_logps(temperature: float) -> Callable:
    def reference_logps(stage, hidden, batch) -> torch.Tensor:
        return policy_logps(stage, hidden, batch.labels, temperature).detach()
    return reference_logps


def make_ppo_loss(ppo: PPOConfig) -> Callable:
    def ppo_loss(stage, hidden, batch) -> torch.Tensor:
        """Clipped surrogate + vf_coef * clipped value loss on rollouts; ptx_coef * next-token loss on pretraining
        rows (InstructGPT eq. 2), each weighted so the mean over the micro-batches is the objective."""
        part = batch.align
        logps = policy_logps(stage, hidden, batch.labels, ppo.temperature if isinstance(part, Rollout) else 1.0)
        if isinstance(part, Pretraining):
            return part.weight * masked_mean_nll(logps, batch.labels)
        assert isinstance(part, Rollout), "PPO micro-batch without its rollout"
        mask = (batch.labels >= 0).float()
        pg, clip_fraction = policy_loss(logps, part.old_logps, part.advantages, mask, ppo.cliprange)
        vf, value_clip_fraction = value_loss(values_of(stage, hidden), part.old_values, part.returns, mask,
                                             ppo.cliprange_value)
        batch.metrics = {**part.stats, "clip_fraction": clip_fraction.detach(), "policy_loss": pg.detach(),
                         "value_loss": vf.detach(), "value_clip_fraction": value_clip_fraction.detach()}
        return part.weight * (pg + ppo.vf_coef * vf)
    return ppo_loss


METRICS = ("reward", "kl", "entropy", "length", "clip_fraction", "policy_loss", "value_loss", "value_clip_fraction")
