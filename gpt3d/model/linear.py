"""Linear layers in bf16 on a CPU: torch's bf16 GEMM, or the same product computed by an fp32 GEMM (`model.bf16_matmul`).

A bf16 GEMM accumulates in fp32 and rounds the result once to bf16. Casting both bf16 operands to fp32 (exact), running
an fp32 GEMM and rounding the result once computes the same quantity; only the order of the fp32 additions differs.
On CPUs without AMX, torch's bf16 GEMM is slower than its fp32 GEMM: on an AVX512-BF16 Xeon, [2048x512]x[512x1536]
took 73 ms in bf16 and 40 ms through fp32 including the casts (one thread, docs/benchmarks.md). On a CPU without
AVX512-BF16 (AVX2) torch emulates bf16 products, slower still. With AMX, torch's bf16 GEMM is the fast one.

    bf16_matmul: "bf16"  torch's bf16 GEMM
                 "fp32"  the fp32 GEMM for bf16 CPU tensors (forward, input gradient and weight gradient); the
                         backward keeps the bf16 operands, not fp32 copies, so activation memory stays bf16
                 "auto"  "fp32" on a CPU without AMX-BF16 (Linux /proc/cpuinfo flags), else "bf16"
Other dtypes and devices always take torch's own GEMM.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

BF16_MATMUL = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=None)
def cpu_has_amx_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def in_fp32(x: torch.Tensor, mode: str) -> bool:
    """Whether a GEMM on `x` under `mode` runs as an fp32 GEMM (bf16 CPU tensors only)."""
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or mode == "bf16":
        return False
    if mode == "fp32":
        return True
    if mode != "auto":
        raise ValueError(f"model.bf16_matmul must be one of {BF16_MATMUL}, got {mode!r}")
    return not cpu_has_amx_bf16()


def matmul(a: torch.Tensor, b: torch.Tensor, fp32: bool) -> torch.Tensor:
    """a @ b; with fp32, as an fp32 GEMM rounded once to a's dtype."""
    return (a.float() @ b.float()).to(a.dtype) if fp32 else a @ b


def weight_gradient(inputs: torch.Tensor, grad_output: torch.Tensor, fp32: bool = False) -> torch.Tensor:
    """dL/dW of y = x W^T: sum over tokens of grad_y^T x."""
    return matmul(grad_output.reshape(-1, grad_output.shape[-1]).t(), inputs.reshape(-1, inputs.shape[-1]), fp32)


class _LinearInFp32(torch.autograd.Function):
    """y = x W^T + b for bf16 tensors, every GEMM of forward and backward in fp32, each result rounded once to the
    dtype autograd expects (y: bf16, or fp32 when `keep_fp32`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, keep_fp32: bool):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out if keep_fp32 else out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad = grad_output.float()  # fp32 already when the output was kept in fp32: it is not rounded
        grad_input = (grad @ weight.float()).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(x.float(), grad).to(weight.dtype)
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(x.dtype)
        return grad_input, grad_weight, grad_bias, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], mode: str = "auto",
           keep_fp32: bool = False) -> torch.Tensor:
    """F.linear, through fp32 GEMMs where `in_fp32(x, mode)`; `keep_fp32` then returns the fp32 result unrounded (the
    output head: its logits go into an fp32 loss anyway, and rounding them to bf16 and back costs two passes)."""
    if in_fp32(x, mode):
        return _LinearInFp32.apply(x, weight, bias, keep_fp32)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose bf16 CPU GEMMs follow `model.bf16_matmul` (same parameters, names and state dict)."""

    def __init__(self, in_features: int, out_features: int, bf16_matmul: str = "auto"):
        super().__init__(in_features, out_features)
        self.bf16_matmul = bf16_matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.bf16_matmul)
