"""The fine-tuning and alignment losses as plain tensor functions (each checked against trl's in tests/finetune).

Conventions: `logps` are per-token log-probabilities of the labels, 0 where the label is ignored (< 0); sequence
log-probabilities are sums over a completion's tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a token without loss (prompt, padding, the token before the next example)


def masked_mean_nll(logps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SFT: mean negative log-likelihood over the tokens that carry a label (the completions)."""
    valid = labels >= 0
    return -(logps * valid).sum() / valid.sum().clamp(min=1)


def pairwise_ranking_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reward model: -log sigmoid(r_chosen - r_rejected); a weighted sum when `weights` are given (InstructGPT's
    1 / C(K,2) per prompt, divided by the prompts), else the mean over pairs."""
    losses = -F.logsigmoid(chosen - rejected)
    return losses.mean() if weights is None else (losses * weights).sum()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (sigmoid loss): -log sigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r))), mean over pairs."""
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return -F.logsigmoid(beta * logits).mean()
