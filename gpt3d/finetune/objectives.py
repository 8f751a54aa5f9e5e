"""The loss each fine-tuning objective computes on the last pipeline stage from the final hidden states.

A micro-batch's labels are a `PackedBatch` (the channels of its packed rows); `GPTStage.forward` calls the stage's
`objective(stage, hidden, batch)` instead of the pre-training cross-entropy. Every loss is a mean over the examples
(or completion tokens, for SFT) of the micro-batch, so any layout with the same micro-batches gives the same losses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gpt3d.config.finetune import CLASSIFY_HEAD, REWARD_HEAD
from gpt3d.config.run import RunConfig
from gpt3d.model.packing import PackedLayout

from . import data as ch
from .logprobs import full_sequence, token_logprobs
from .losses import dpo_loss, masked_mean_nll, pairwise_ranking_loss


@dataclass
class PackedBatch:
    """One micro-batch of packed rows as the last stage sees it (plus the layout every stage sees)."""
    tokens: torch.Tensor
    labels: torch.Tensor
    marks: torch.Tensor
    targets: torch.Tensor
    examples: torch.Tensor
    layout: PackedLayout
    reference: Optional[torch.Tensor] = None  # DPO: the frozen reference's [examples, 2] sequence log-probs
    align: Optional[object] = None  # PPO: the rollout (gpt3d/align/objective.py) or the ptx weight
    metrics: Optional[dict] = None  # set by the objective on the last stage: name -> scalar tensor

    @classmethod
    def from_rows(cls, rows: np.ndarray, device) -> "PackedBatch":
        t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(device)
        layout = PackedLayout(t[:, ch.POSITIONS], t[:, ch.SEGMENTS], t[:, ch.BRANCHES])
        return cls(t[:, ch.TOKENS], t[:, ch.LABELS], t[:, ch.MARKS], t[:, ch.TARGETS], t[:, ch.EXAMPLES], layout)

    def example_index(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(flat example id per token, the ids present in order, number of ids): rows never share ids."""
        per_row = int(self.examples.max()) + 1
        rows = torch.arange(self.examples.shape[0], device=self.examples.device).unsqueeze(1)
        flat = self.examples + per_row * rows
        return flat, torch.unique(flat[self.examples > 0]), per_row * self.examples.shape[0]


def sequence_sums(values: torch.Tensor, batch: PackedBatch, where: torch.Tensor) -> torch.Tensor:
    """Per example (in order), the sum of `values` [b, s] over the tokens selected by `where`."""
    flat, present, size = batch.example_index()
    sums = torch.zeros(size, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, flat.flatten(), (values * where).flatten())
    return sums[present]


def sft_loss(stage, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    return masked_mean_nll(token_logprobs(stage, hidden, batch.labels), batch.labels)


def completion_logps(stage, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """[examples, 2]: log p(chosen | prompt), log p(rejected | prompt) summed over the completion tokens."""
    logps = token_logprobs(stage, hidden, batch.labels)
    branches = batch.layout.branches
    return torch.stack([sequence_sums(logps, batch, branches == 1), sequence_sums(logps, batch, branches == 2)], -1)


def make_dpo_loss(beta: float) -> Callable:
    def dpo(stage, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        assert batch.reference is not None, "DPO micro-batch without the reference model's log-probs"
        policy = completion_logps(stage, hidden, batch)
        ref = batch.reference
        margin = beta * ((policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])).detach()
        batch.metrics = {"reward_accuracy": (margin > 0).float().mean(), "reward_margin": margin.mean()}
        return dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta)
    return dpo


def reference_logps(stage, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    return completion_logps(stage, hidden, batch).detach()


def head_inputs(stage, hidden: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states at the marked tokens, their flat example ids), in row-major order."""
    where = batch.marks > 0
    flat, _, _ = batch.example_index()
    return full_sequence(stage, hidden)[where], flat[where]


def reward_scores(stage, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """The reward of every completion (its last token's final state through the reward head), row-major order."""
    h, _ = head_inputs(stage, hidden, batch)
    return stage.task_heads[REWARD_HEAD](h).squeeze(-1).float()


def reward_loss(stage, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """InstructGPT: every pair (better, worse) of one prompt's K ranked completions, weighted 1 / C(K,2) per prompt,
    averaged over the prompts."""
    rewards = reward_scores(stage, hidden, batch)
    where = batch.marks > 0
    example, ranks = batch.example_index()[0][where], batch.marks[where]
    better = (example[:, None] == example[None, :]) & (ranks[:, None] < ranks[None, :])
    i, j = better.nonzero(as_tuple=True)
    prompts, inverse = torch.unique(example, return_inverse=True)
    pairs_per_prompt = torch.zeros(len(prompts), device=rewards.device).index_add(
        0, inverse[i], torch.ones(len(i), device=rewards.device))
    weights = 1.0 / (pairs_per_prompt[inverse[i]] * len(prompts))
    margin = (rewards[i] - rewards[j]).detach()
    batch.metrics = {"accuracy": ((margin > 0).float() * weights).sum(), "reward_margin": (margin * weights).sum()}
    return pairwise_ranking_loss(rewards[i], rewards[j], weights)


def make_classify_loss(task: str, lm_coef: float) -> Callable:
    def classify(stage, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """GPT-1: L = L_task + lm_coef * L_lm. The head reads the final state of every extract token; similarity
        sums the two orders' states, multiple choice scores each choice and takes a softmax over them."""
        h, example = head_inputs(stage, hidden, batch)
        targets = batch.targets[batch.marks > 0]
        head = stage.task_heads[CLASSIFY_HEAD]
        groups, inverse = torch.unique(example, return_inverse=True)
        first = torch.zeros(len(groups), dtype=torch.long, device=h.device).scatter_reduce(
            0, inverse, torch.arange(len(inverse), device=h.device), "amin", include_self=False)
        if task == "multiple_choice":
            scores = head(h).squeeze(-1).float()
            losses = [F.cross_entropy(scores[inverse == g].unsqueeze(0), targets[first[g]].unsqueeze(0))
                      for g in range(len(groups))]
            task_loss = torch.stack(losses).mean()
            right = [scores[inverse == g].argmax() == targets[first[g]] for g in range(len(groups))]
        else:
            summed = torch.zeros(len(groups), h.shape[-1], dtype=h.dtype, device=h.device).index_add(0, inverse, h)
            logits = head(summed).float()
            task_loss = F.cross_entropy(logits, targets[first])
            right = list(logits.argmax(-1) == targets[first])
        batch.metrics = {"accuracy": torch.stack(right).float().mean().detach()}
        if lm_coef == 0:
            return task_loss
        return task_loss + lm_coef * masked_mean_nll(token_logprobs(stage, hidden, batch.labels), batch.labels)
    return classify


# The metrics each objective reports next to its loss (means over the global batch, in metrics.jsonl).
METRICS = {"sft": (), "reward": ("accuracy", "reward_margin"), "dpo": ("reward_accuracy", "reward_margin"),
           "classify": ("accuracy",), "ppo": ()}  # ppo: gpt3d/align/trainer.py


def objective_for(cfg: RunConfig) -> Callable:
    ft, objective = cfg.finetune, cfg.train.objective
    if objective == "sft":
        return sft_loss
    if objective == "reward":
        return reward_loss
    if objective == "dpo":
        return make_dpo_loss(ft.dpo.beta)
    if objective == "classify":
        return make_classify_loss(ft.classify.task, ft.classify.lm_coef)
    if objective == "ppo":
        from gpt3d.align.objective import make_ppo_loss
        return make_ppo_loss(ft.ppo)
    raise ValueError(f"train.objective={objective!r} has no fine-tuning loss")
