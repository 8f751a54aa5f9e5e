"""PPO-ptx (InstructGPT, Ouyang et al. 2022, eq. 2): `train.objective: ppo`, `gpt3d align`. See docs/finetune-and-align.md.

The policy starts from finetune.init_from (`--policy`), reads prompts from finetune.data (`--prompts`), and is scored by
a frozen reward model; the frozen reference policy is the starting checkpoint unless `reference` names another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import field, require


@dataclass
class PPOConfig:
    reward_model: Optional[str] = field(None, doc="reward model checkpoint (`--reward`; trained with `gpt3d finetune "
                                                  "--objective reward`, it must have the reward head); frozen")
    reference: Optional[str] = field(None, doc="frozen reference policy of the KL penalty; default: the starting "
                                               "policy (finetune.init_from)")
    max_new_tokens: int = field(16, doc="tokens sampled per prompt in a rollout (a completion ends earlier at "
                                        "<|endoftext|>); prompt + completion must fit train.seq_len")
    temperature: float = field(1.0, doc="sampling temperature of the rollouts; the PPO log-probabilities are of "
                                        "logits / temperature, as trl")
    kl_coef: float = field(0.02, doc="beta: per-token penalty -beta * (log pi - log pi_ref) added to the rewards "
                                     "(InstructGPT: 0.02)")
    gamma: float = field(1.0, doc="discount of GAE")
    lam: float = field(0.95, doc="lambda of GAE")
    cliprange: float = field(0.2, doc="epsilon of the clipped surrogate: the ratio is clipped to [1-eps, 1+eps]")
    cliprange_value: float = field(0.2, doc="the value prediction is clipped to old value +- this")
    vf_coef: float = field(0.1, doc="weight of the value loss: loss = policy loss + vf_coef * value loss")
    epochs: int = field(4, doc="PPO epochs (optimizer steps) over each step's rollouts")
    ptx_coef: float = field(0.0, doc="gamma of PPO-ptx: loss += ptx_coef * next-token loss on the pretraining data "
                                     "(InstructGPT: 27.8); 0 = plain PPO")
    ptx_data: Optional[str] = field(None, doc="pretraining data of the ptx term: prefix of an indexed dataset "
                                              "(`gpt3d preprocess`, the policy's tokenizer) (`--ptx-data`)")
    ptx_batch_size: int = field(0, doc="pretraining sequences per step (global, cut into micro-batches like the "
                                       "rollouts); default 0 = train.global_batch_size")

    def __post_init__(self):
        require(self.max_new_tokens >= 1, "finetune.ppo.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0, "finetune.ppo.temperature",
                f"must be > 0 (PPO needs a sampling distribution), got {self.temperature}")
        for name in ("kl_coef", "cliprange", "cliprange_value", "vf_coef", "ptx_coef", "ptx_batch_size"):
            require(getattr(self, name) >= 0, f"finetune.ppo.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            require(0 <= getattr(self, name) <= 1, f"finetune.ppo.{name}",
                    f"must be in [0, 1], got {getattr(self, name)}")
        require(self.epochs >= 1, "finetune.ppo.epochs", f"must be >= 1, got {self.epochs}")
        require(self.ptx_coef == 0 or self.ptx_data is not None, "finetune.ppo.ptx_data",
                f"ptx_coef={self.ptx_coef} mixes in pretraining gradients: pass --ptx-data PREFIX (an indexed "
                f"dataset from `gpt3d preprocess`), or set finetune.ppo.ptx_coef=0")
        require(self.ptx_data is None or self.ptx_coef > 0, "finetune.ppo.ptx_coef",
                "--ptx-data is given but ptx_coef is 0, so it would be ignored; set finetune.ppo.ptx_coef "
                "(InstructGPT: 27.8)")

    def check_run(self, cfg) -> None:
        """What PPO needs from the rest of the run config (cfg: RunConfig)."""
        require(self.reward_model is not None, "finetune.ppo.reward_model",
                "train.objective=ppo scores rollouts with a reward model; pass --reward RM_CKPT")
        require(cfg.finetune.init_from is not None, "finetune.init_from",
                "train.objective=ppo starts from a policy (the SFT model); pass --policy SFT_CKPT")
        m = cfg.model
        require(m.hidden_dropout == 0 and m.attn_dropout == 0, "model.hidden_dropout",
                "PPO's probability ratio compares the policy with itself at rollout time: set "
                "model.hidden_dropout=0 and model.attn_dropout=0")
        require(cfg.parallel.vp == 1, "parallel.vp",
                "rollouts run in the pipeline layout of the inference engine (one chunk per stage): use parallel.vp=1")
        require(cfg.train.eval_interval == 0, "train.eval_interval",
                "PPO has no validation loss (reward and KL are logged every step): set train.eval_interval=0")
        require(cfg.train.dtype == "fp32", "train.dtype", "PPO runs in fp32 here: set train.dtype=fp32")
        require(self.ptx_batch_size % cfg.train.micro_batch_size == 0, "finetune.ppo.ptx_batch_size",
                f"{self.ptx_batch_size} pretraining sequences do not split into micro-batches of "
                f"train.micro_batch_size={cfg.train.micro_batch_size}; use a multiple of it (per data-parallel rank)")
        need = self.max_new_tokens + 1
        require(cfg.train.seq_len >= need, "finetune.ppo.max_new_tokens",
                f"{self.max_new_tokens} new tokens leave no room for a prompt in train.seq_len={cfg.train.seq_len}")
