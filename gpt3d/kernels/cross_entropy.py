"""Fused cross-entropy pieces (csrc/cross_entropy/): the row log-sum-exp of the logits and the in-place gradient.

    logsumexp_rows(logits, real_cols, impl="fused") -> lse [rows], fp32
    cross_entropy_grad_(logits, lse, labels, scale, real_cols, impl="fused") -> logits, overwritten with
        scale * (softmax - one-hot(labels)) over the first real_cols columns, 0 in the rest

logits are [rows, cols] (float32 or bfloat16; math in fp32), of which the first real_cols columns are the vocabulary
(or this rank's shard of it) and the rest padding. A label outside [0, real_cols) subtracts no one-hot (its column
lives on another vocabulary shard). `scale` is a one-element fp32 tensor (the loss gradient over the token count),
read by the kernel, so a GPU never waits for it. gpt3d.model.cross_entropy and the vocabulary-parallel loss build the
loss on these: loss = lse - logits[label]. torch spends about four passes over each logit on the log-sum-exp
(max, subtract, exp, sum) and four on the gradient (subtract, exp, one-hot, scale); the kernels read the logits
twice and once, with the kernels' vector exp.
"""
from __future__ import annotations

import torch

from gpt3d.kernels import _ext, _select, reference

_AVAILABLE = _ext.has_op("logsumexp_rows")
_DEVICES = _select.kernel_devices()


def _fused(impl: str, op: str, logits: torch.Tensor) -> bool:
    _select.check_impl(impl, op)
    _select.require_floating(op, "logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"gpt3d.kernels.{op}: logits must be [rows, cols], got shape {tuple(logits.shape)}; "
                         f"flatten the leading dimensions")
    return (_select.resolve(impl, "cross_entropy", logits) == "fused"
            and _select.use_fused("cross_entropy", _AVAILABLE, _DEVICES, logits) and logits.is_contiguous())


def logsumexp_rows(logits: torch.Tensor, real_cols: int, impl: str = "fused") -> torch.Tensor:
    """log sum exp of each row's first real_cols logits, fp32 [rows] (-inf when real_cols is 0)."""
    if _fused(impl, "logsumexp_rows", logits):
        return torch.ops.gpt3d_C.logsumexp_rows(logits, int(real_cols))
    return reference.logsumexp_rows(logits, real_cols)


def cross_entropy_grad_(logits: torch.Tensor, lse: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor,
                        real_cols: int, impl: str = "fused") -> torch.Tensor:
    """Overwrite logits with the mean cross-entropy's gradient (see the module docstring); returns them."""
    if _fused(impl, "cross_entropy_grad_", logits):
        torch.ops.gpt3d_C.cross_entropy_bwd_(logits, lse, labels, scale.reshape(()).float(), int(real_cols))
        return logits
    return reference.cross_entropy_grad_(logits, lse, labels, scale, real_cols)


def _register() -> None:
    """Fake kernels (shapes only, for torch.compile / meta tensors) of the C++ ops."""

    @torch.library.register_fake("gpt3d_C::logsumexp_rows")
    def _lse_fake(logits, real_cols):
        return logits.new_empty(logits.shape[:1], dtype=torch.float32)

    @torch.library.register_fake("gpt3d_C::cross_entropy_bwd_")
    def _bwd_fake(logits, lse, labels, scale, real_cols):
        return None


if _AVAILABLE:
    _register()
