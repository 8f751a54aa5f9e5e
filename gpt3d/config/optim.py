"""Optimizer and learning-rate schedule config (GPT-3 appendix B defaults)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import field, require


@dataclass
class OptimConfig:
    lr: float = field(6e-4, doc="peak learning rate")
    min_lr_ratio: float = field(0.1, doc="cosine decays to lr * min_lr_ratio, then stays constant")
    warmup_steps: int = field(0, doc="linear warm-up steps")
    decay_steps: Optional[int] = field(None, doc="steps of cosine decay after warm-up; default: train.steps - warmup")
    weight_decay: float = field(0.1, doc="AdamW weight decay (not applied to biases, norms, embeddings' positions)")
    beta1: float = field(0.9, doc="Adam beta1")
    beta2: float = field(0.95, doc="Adam beta2")
    eps: float = field(1e-8, doc="Adam epsilon")
    grad_clip: float = field(1.0, doc="clip the global gradient norm to this (0 disables)")
    initial_loss_scale: float = field(2.0 ** 16, doc="fp16 only: initial dynamic loss scale")
    loss_scale_window: int = field(1000, doc="fp16 only: steps without overflow before the scale doubles")

    def __post_init__(self):
        require(self.lr > 0, "optim.lr", f"must be positive, got {self.lr}")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        require(self.decay_steps is None or self.decay_steps >= 0, "optim.decay_steps", "must be >= 0")
        require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1", "betas must be in [0, 1)")
        require(self.eps > 0, "optim.eps", "must be positive")
        require(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
