"""Training loop config: steps, batch, precision, evaluation, logging."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .base import field, require


@dataclass
class TrainConfig:
    objective: Literal["pretrain", "sft", "classify", "reward", "dpo", "ppo"] = field(
        "pretrain", doc="what the loss is: pretrain (next token); sft, classify, reward, dpo read finetune.data; ppo "
                        "(`gpt3d align`) reads prompts there (see the finetune section and docs/finetune-and-align.md)")
    steps: int = field(300, doc="optimizer steps")
    global_batch_size: int = field(8, doc="sequences per optimizer step (= micro_batch * micro-batches * dp)")
    micro_batch_size: int = field(8, doc="sequences per forward/backward on one rank")
    seq_len: Optional[int] = field(None, doc="training sequence length; default model.seq_len (must not exceed it)")
    seed: int = field(1234, doc="seed of weights, data order and dropout")
    dtype: Literal["fp32", "bf16", "fp16"] = field(
        "fp32", doc="weights and compute dtype; bf16/fp16 keep fp32 main grads and fp32 master weights + Adam in the "
                    "optimizer (Megatron-style, docs/precision.md); fp16 uses dynamic loss scaling")
    device: Literal["auto", "cpu", "cuda"] = field("auto", doc="auto = cuda when available, else cpu")
    eval_interval: int = field(100, doc="validation every N steps (0 disables)")
    eval_iters: int = field(4, doc="validation batches per evaluation")
    log_interval: int = field(1, doc="write metrics every N steps")
    tensorboard: bool = field(True, doc="write TensorBoard scalars to RUN/tensorboard")
    progress: bool = field(True, doc="show a progress bar on rank 0")
    threads: Optional[int] = field(None, doc="CPU threads per rank; default: cores / local ranks")

    def __post_init__(self):
        for name in ("steps", "global_batch_size", "micro_batch_size", "log_interval", "eval_iters"):
            require(getattr(self, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.eval_interval >= 0, "train.eval_interval", "must be >= 0")
        require(self.seq_len is None or self.seq_len >= 1, "train.seq_len", "must be >= 1")
        require(self.threads is None or self.threads >= 1, "train.threads", "must be >= 1")
