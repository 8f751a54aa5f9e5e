"""The weight gradient of a linear layer, routed through a store instead of autograd: the backward computes the input
gradient itself (B) and hands (input, output gradient) to the store, which either keeps them to compute the weight
gradient later (W, while a zero-bubble schedule is capturing) or has it computed at once.

A `WeightGradStore` belongs to one Trainer. The pipeline runner opens `capture(key)` around the B of (chunk,
micro-batch) and later calls `flush(key)` for its W. Every weight gradient, deferred or not, goes to one sink,
`GradSynchronizer.accumulate_weight_grad(param, inputs, grad_output, fp32, deferred)`, which adds it into the fp32
main gradient (with gradient-accumulation fusion, by the weight-gradient GEMM itself) and tells data-parallel
bucketing that the gradient is in. A linear without a store has an ordinary linear backward.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Hashable, Optional

import torch
from torch import nn

from gpt3d.model import gemm
from gpt3d.model.linear import in_fp32, matmul, weight_gradient
from gpt3d.model.linear import linear as model_linear

from . import comm


WeightGradSink = Callable[[nn.Parameter, torch.Tensor, torch.Tensor, bool, bool], None]
"""sink(param, inputs, grad_output, fp32, deferred): add dL/dW = grad_output^T inputs (GEMM in fp32 when `fp32`) to
the parameter's gradient; `deferred` when it comes from a W step."""


class WeightGradStore:
    def __init__(self, sink: WeightGradSink):
        self.sink = sink
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
            self.sink(param, inputs, grad_output, fp32, True)

    def accumulate_now(self, param: nn.Parameter, inputs: torch.Tensor, grad_output: torch.Tensor, fp32: bool) -> None:
        """A weight gradient of a backward that is not captured: to the sink at once."""
        self.sink(param, inputs, grad_output, fp32, False)

    def clear(self) -> None:
        self.pending.clear()


class _SplitLinear(torch.autograd.Function):
    """A linear whose backward hands its weight gradient to a store (deferred while it captures, else at once) and,
    as the column-parallel linear of tensor parallelism, sums the input gradient over `reduce_group` asynchronously
    while the weight gradient is computed (Megatron-LM overlaps the same two); the sum is the backward of the
    identity entering a column-parallel region, comm.CopyToTensorParallel, moved here so that it overlaps."""

    @staticmethod
    def forward(ctx, x, weight, bias, store: Optional[WeightGradStore], bf16_matmul: str, reduce_group=None,
                keep_fp32: bool = False, immediate: bool = False):
        device = x.device.type
        if torch.is_autocast_enabled(device):  # cast as autocast would, and keep the cast copies for backward
            dtype = torch.get_autocast_dtype(device)
            x_c, w_c = x.to(dtype), weight.to(dtype)
            b_c = bias.to(dtype) if bias is not None else None
        else:
            x_c, w_c, b_c = x, weight, bias
        with torch.autocast(device, enabled=False):
            out = model_linear(x_c, w_c, b_c, bf16_matmul, keep_fp32=keep_fp32)
        ctx.save_for_backward(x_c, w_c)
        ctx.param, ctx.store, ctx.has_bias, ctx.reduce_group = weight, store, bias is not None, reduce_group
        ctx.fp32 = in_fp32(x_c, bf16_matmul)
        ctx.unrounded = keep_fp32 and ctx.fp32  # an fp32 output of bf16 operands: its gradient stays fp32
        ctx.immediate = immediate
        return out

    @staticmethod
    def backward(ctx, grad_output):
        x, w = ctx.saved_tensors
        if ctx.unrounded:  # as gpt3d.model.linear's fp32 route: the GEMMs take the fp32 gradient as it is
            grad_output = grad_output.float()
            grad_input = gemm.mm(grad_output, w.float()).to(x.dtype) if ctx.needs_input_grad[0] else None
        else:
            grad_output = grad_output.to(w.dtype)
            grad_input = matmul(grad_output, w, ctx.fp32) if ctx.needs_input_grad[0] else None
        pending = None
        if grad_input is not None and ctx.reduce_group is not None:
            pending = comm.start_all_reduce(grad_input, ctx.reduce_group)
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0).to(w.dtype)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            if ctx.store is None:
                grad_weight = weight_gradient(x, grad_output, ctx.fp32).to(w.dtype)
            elif ctx.store.capturing and not ctx.immediate:
                ctx.store.defer(ctx.param, x, grad_output, ctx.fp32)
            else:
                ctx.store.accumulate_now(ctx.param, x, grad_output, ctx.fp32)
        if pending is not None:
            pending.wait()
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def linear(x: torch.Tensor, weight: nn.Parameter, bias: Optional[torch.Tensor],
           store: Optional[WeightGradStore], bf16_matmul: str = "auto", reduce_input_grad=None,
           keep_fp32: bool = False, immediate: bool = False) -> torch.Tensor:
    """gpt3d.model.linear.linear, with the weight gradient through `store` when one is attached (deferred while it
    captures, unless `immediate`) and, given a group in `reduce_input_grad` (of more than one rank), the input
    gradient summed over it, overlapping the weight gradient."""
    if reduce_input_grad is not None and reduce_input_grad.size == 1:
        reduce_input_grad = None
    if (store is None and reduce_input_grad is None) or not torch.is_grad_enabled():
        return model_linear(x, weight, bias, bf16_matmul, keep_fp32=keep_fp32)
    return _SplitLinear.apply(x, weight, bias, store, bf16_matmul, reduce_input_grad, keep_fp32, immediate)
