"""The B/W split of a linear layer: the backward computes the input gradient now (B) and, while a zero-bubble
schedule is capturing, keeps (input, output gradient) to compute the weight gradient later (W).

A `WeightGradStore` belongs to one Trainer. The pipeline runner opens `capture(key)` around the B of (chunk,
micro-batch) and later calls `flush(key)` for its W; every deferred weight gradient is then added through one sink,
`GradSynchronizer.add_weight_grad(param, grad)`, which also tells data-parallel bucketing that the gradient is in.
Outside a capture (non-split schedules, evaluation, single process) the backward is an ordinary linear backward.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Hashable, Optional

import torch
from torch import nn

from gpt3d.model.linear import in_fp32, matmul, weight_gradient
from gpt3d.model.linear import linear as model_linear

from . import comm


class WeightGradStore:
    def __init__(self, add_weight_grad: Callable[[nn.Parameter, torch.Tensor], None]):
        self.add_weight_grad = add_weight_grad
        self.pending: dict[Hashable, list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]] = {}
        self._key: Optional[Hashable] = None

    @property
    def capturing(self) -> bool:
        return self._key is not None

    @contextlib.contextmanager
    def capture(self, key: Hashable):
        assert self._key is None, f"capture {key} inside capture {self._key}"
        self.pending.setdefault(key, [])
        self._key = key
        try:
            yield
        finally:
            self._key = None

    def defer(self, param: nn.Parameter, inputs: torch.Tensor, grad_output: torch.Tensor, fp32: bool) -> None:
        self.pending[self._key].append((param, inputs, grad_output, fp32))

    def flush(self, key: Hashable) -> None:
        """W of `key`: compute and add every weight gradient its B deferred, in the order B produced them."""
        with torch.no_grad():
            self._flush(key)

    def _flush(self, key: Hashable) -> None:
        for param, inputs, grad_output, fp32 in self.pending.pop(key):
            self.add_weight_grad(param, weight_gradient(inputs, grad_output, fp32))

    def clear(self) -> None:
        self.pending.clear()


class _SplitLinear(torch.autograd.Function):
    """A linear whose backward can defer its weight gradient (a store capturing) and, as the column-parallel linear
    of tensor parallelism, sum the input gradient over `reduce_group` asynchronously while the weight gradient is
    computed (Megatron-LM overlaps the same two); the sum is the backward of the identity entering a column-parallel
    region, comm.CopyToTensorParallel, moved here so that it overlaps."""

    @staticmethod
    def forward(ctx, x, weight, bias, store: Optional[WeightGradStore], bf16_matmul: str, reduce_group=None):
        device = x.device.type
        if torch.is_autocast_enabled(device):  # cast as autocast would, and keep the cast copies for backward
            dtype = torch.get_autocast_dtype(device)
            x_c, w_c = x.to(dtype), weight.to(dtype)
            b_c = bias.to(dtype) if bias is not None else None
        else:
            x_c, w_c, b_c = x, weight, bias
        with torch.autocast(device, enabled=False):
            out = model_linear(x_c, w_c, b_c, bf16_matmul)
        ctx.save_for_backward(x_c, w_c)
        ctx.param, ctx.store, ctx.has_bias, ctx.reduce_group = weight, store, bias is not None, reduce_group
        ctx.fp32 = in_fp32(x_c, bf16_matmul)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        x, w = ctx.saved_tensors
        grad_output = grad_output.to(w.dtype)
        grad_input = matmul(grad_output, w, ctx.fp32) if ctx.needs_input_grad[0] else None
        pending = None
        if grad_input is not None and ctx.reduce_group is not None:
            pending = comm.start_all_reduce(grad_input, ctx.reduce_group)
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            if ctx.store is not None and ctx.store.capturing:
                ctx.store.defer(ctx.param, x, grad_output, ctx.fp32)
            else:
                grad_weight = weight_gradient(x, grad_output, ctx.fp32)
        if pending is not None:
            pending.wait()
        return grad_input, grad_weight, grad_bias, None, None, None


def linear(x: torch.Tensor, weight: nn.Parameter, bias: Optional[torch.Tensor],
           store: Optional[WeightGradStore], bf16_matmul: str = "auto", reduce_input_grad=None) -> torch.Tensor:
    """gpt3d.model.linear.linear, with a B/W-splittable backward when a store is attached and, given a group in
    `reduce_input_grad` (of more than one rank), the input gradient summed over it, overlapping the weight gradient."""
    if reduce_input_grad is not None and reduce_input_grad.size == 1:
        reduce_input_grad = None
    if (store is None and reduce_input_grad is None) or not torch.is_grad_enabled():
        return model_linear(x, weight, bias, bf16_matmul)
    return _SplitLinear.apply(x, weight, bias, store, bf16_matmul, reduce_input_grad)
