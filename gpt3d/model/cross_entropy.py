"""The LM loss: mean token cross-entropy over the first `vocab` columns of the logits, in one autograd function.

Compared with `F.cross_entropy` over logits padded with -inf: no bias pass to write -inf into the padded columns
(addmm copies its bias into the whole output first), no saved log-softmax the size of the logits, and the backward
writes the gradient (softmax minus one-hot) into the logits' own storage instead of zero-filling a new one: the logits
are dead once the loss is taken, as in Megatron-LM's fused cross-entropy. The log-sum-exp and the gradient run in
gpt3d.kernels (the fused C++ kernels, or chunked PyTorch that keeps each chunk in cache). fp32 logits give the same
numbers as `F.cross_entropy` to rounding (tests/model/test_cross_entropy.py); bf16 logits are read as they are,
computed in fp32, and the gradient rounded once to bf16 into their storage. On the head of a 6-layer d512 GPT (2048
tokens, vocab 50304, fp32, 2 threads), head GEMM + loss forward and backward took 1.29-1.33 s instead of 1.60-1.61 s
(one run, alternating, before the kernels).
"""
from __future__ import annotations

import torch

from gpt3d import kernels


def loss_workspace(logits: torch.Tensor) -> torch.Tensor:
    """[tokens, vocab]: what a loss reads and its backward overwrites with the gradient. The logits themselves when
    fp32 or bf16 (the kernels and their reference read both, in fp32 math), else an fp32 copy. An fp32 copy of bf16
    logits would give the same bits for two more passes over [tokens, vocab] (108 ms of a 1.1 s bf16 step at vocab
    50304, AMD EPYC)."""
    work = logits if logits.dtype in (torch.float32, torch.bfloat16) else logits.float()
    if work.dim() != 2:
        work = work.reshape(-1, work.shape[-1])  # 2-D logits stay themselves, not a view (autograd saves them)
    return work.contiguous()


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, vocab: int, impl: str) -> torch.Tensor:
        work = loss_workspace(logits)
        lse = kernels.logsumexp_rows(work, vocab, impl=impl)
        target = work.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
        ctx.save_for_backward(work, labels, lse)
        ctx.vocab, ctx.in_dtype, ctx.impl = vocab, logits.dtype, impl
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        work, labels, lse = ctx.saved_tensors
        kernels.cross_entropy_grad_(work, lse, labels, grad / labels.numel(), ctx.vocab, impl=ctx.impl)
        return work.to(ctx.in_dtype), None, None, None


def check_labels(labels: torch.Tensor, vocab: int, where: str) -> None:
    """Labels outside [0, vocab) raise here, naming them (checked on the CPU only: on a GPU the check would wait
    for the device every step)."""
    if labels.device.type == "cpu" and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
        raise ValueError(f"{where}: labels must lie in [0, {vocab}), got [{int(labels.min())}, "
                         f"{int(labels.max())}]")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab: int, impl: str = "auto") -> torch.Tensor:
    """Mean over tokens of -log softmax(logits[:, :vocab])[label], for logits [tokens, padded vocab] and labels
    [tokens] in [0, vocab). The logits' storage is overwritten by the backward: do not use them after it. `impl`
    (model.kernels) picks the fused log-sum-exp and gradient kernels (csrc/cross_entropy/) or their PyTorch
    reference."""
    check_labels(labels, vocab, "cross_entropy")
    return _CrossEntropy.apply(logits, labels, vocab, impl)
