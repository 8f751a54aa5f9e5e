"""Per-token log-probabilities of labels from the last stage's LM head, without gathering vocabulary-parallel logits.

Under tensor parallelism each rank holds a contiguous slice of the (padded) vocabulary; only [tokens]-sized max,
sum-of-exp and target-logit vectors cross the TP group (as in the vocabulary-parallel cross-entropy of pre-training).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from gpt3d.parallel import comm
from gpt3d.parallel.context import Group



class _VocabParallelLogProb(torch.autograd.Function):
    """log softmax(logits)[label] per token from vocabulary-sharded logits; 0 where the label is ignored."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, group: Group):
        logits = logits.float()
        global_max = comm.all_reduce(logits.max(dim=-1).values.clone(), group, "logp_max", dist.ReduceOp.MAX)
        shifted = logits - global_max.unsqueeze(-1)
        valid = labels >= 0
        local = labels - vocab_start
        in_range = (local >= 0) & (local < logits.shape[-1]) & valid
        local = local.clamp(0, logits.shape[-1] - 1)
        target = torch.where(in_range, shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1), 0.0)
        exp = shifted.exp()
        stats = comm.all_reduce(torch.stack([target, exp.sum(dim=-1)]), group, "logp_stats")
        logp = torch.where(valid, stats[0] - stats[1].log(), 0.0)
        ctx.save_for_backward(exp / stats[1].unsqueeze(-1), local, in_range, valid)
        return logp

    @staticmethod
    def backward(ctx, grad):
        softmax, local, in_range, valid = ctx.saved_tensors
        grad = grad * valid
        g = softmax * -grad.unsqueeze(-1)
        g.scatter_add_(-1, local.unsqueeze(-1), (grad * in_range).unsqueeze(-1))
        return g, None, None, None


def token_logprobs(stage, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[b, s] log p(label) under the stage's LM head (0 where labels < 0); `hidden` is the final LayerNorm output."""
    head, weight = stage.head, stage.head_weight()
    if hasattr(head, "vocab_start"):  # vocabulary-parallel head (tensor parallelism)
        return _VocabParallelLogProb.apply(head._local_logits(hidden, weight), labels, head.vocab_start, head.group)
    logps = torch.log_softmax(head.padded_logits(hidden, weight).float(), dim=-1)
    picked = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labels >= 0, picked, 0.0)


class _GatherReplicated(torch.autograd.Function):
    """Sequence-sharded -> full sequence for a computation every TP rank repeats identically (the task heads):
    all-gather forward; backward keeps this rank's shard of the (identical) full gradient."""

    @staticmethod
    def forward(ctx, x, group: Group):
        ctx.group = group
        return torch.cat(comm.gather_list(x, group), dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ctx.group.size, dim=1)[ctx.group.rank].contiguous(), None


def full_sequence(stage, hidden: torch.Tensor) -> torch.Tensor:
    """The final hidden states of the whole sequence (gathered under sequence parallelism)."""
    head = stage.head
    if getattr(head, "sequence_parallel", False) and head.group.size > 1:
        return _GatherReplicated.apply(hidden, head.group)
    return hidden


@torch.no_grad()
def token_entropy(stage, hidden: torch.Tensor) -> torch.Tensor:
    """[b, s] entropy of the LM head's distribution at every position; vocabulary-parallel heads reduce three
    [b, s] vectors over the TP group, never the logits."""
    head, weight = stage.head, stage.head_weight()
    parallel = hasattr(head, "vocab_start")
    logits = (head._local_logits(hidden, weight) if parallel else head.padded_logits(hidden, weight)).float()
    top = logits.max(dim=-1).values
    if parallel:
        top = comm.all_reduce(top, head.group, "entropy_max", dist.ReduceOp.MAX)
    shifted = logits - top.unsqueeze(-1)
    exp = shifted.exp()
    weighted = torch.where(exp > 0, exp * shifted, 0.0)  # padded columns: exp 0, shifted -inf
    sums = torch.stack([exp.sum(dim=-1), weighted.sum(dim=-1)])
    if parallel:
        sums = comm.all_reduce(sums, head.group, "entropy_sums")
    return sums[0].log() - sums[1] / sums[0]
