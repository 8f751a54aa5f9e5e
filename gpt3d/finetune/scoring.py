"""A reward model checkpoint in one process: the reward of token-level completions of prompts (each prompt encoded
once, its completions as branches), for evaluation and for the end-to-end tests."""
from __future__ import annotations

from typing import Sequence

import torch

from gpt3d.checkpoint.errors import CheckpointError
from gpt3d.config.finetune import REWARD_HEAD

from .data import pack
from .examples import branch_tree
from .objectives import PackedBatch, reward_scores
from .weights import load_weights, open_checkpoint


class RewardModel:
    def __init__(self, path: str):
        from gpt3d.model.gpt import build_gpt
        ckpt = open_checkpoint(path)
        cfg = ckpt.model_config()
        ckpt.close()
        if REWARD_HEAD not in cfg.task_heads:
            raise CheckpointError(f"{path}: not a reward model (its model.task_heads are {cfg.task_heads or 'none'}); "
                                  f"train one with `gpt3d finetune --objective reward`")
        self.cfg = cfg
        self.model = build_gpt(cfg, 0).eval()
        load_weights([self.model], path)
        self.model.objective = reward_scores

    @torch.no_grad()
    def score(self, prompt: Sequence[int], completions: Sequence[Sequence[int]], pad_id: int = 0) -> list[float]:
        example = branch_tree(prompt, completions, learned=False)
        rows = pack([example], len(example), pad_id, several=False)
        batch = PackedBatch.from_rows(rows, torch.device("cpu"))
        return self.model(batch.tokens, batch, layout=batch.layout).tolist()
