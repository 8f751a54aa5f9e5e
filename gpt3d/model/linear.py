"""Linear layers in bf16 on a CPU: torch's bf16 GEMM, or the same product computed by an fp32 GEMM (`model.bf16_matmul`).

A bf16 GEMM accumulates in fp32 and rounds the result once to bf16. Casting both bf16 operands to fp32 (exact), running
an fp32 GEMM and rounding the result once computes the same quantity; only the order of the fp32 additions differs.
Which is faster depends on the CPU, through the two libraries torch calls (docs/precision.md has the numbers):
- Intel without AMX: MKL's fp32 GEMM runs at full AVX-512 width and torch's bf16 GEMM (oneDNN) is slower. On an
  AVX512-BF16 Xeon, [2048x512]x[512x1536] took 73 ms in bf16 and 40 ms through fp32 including the casts (one thread).
- AMD with AVX512-BF16 (Zen 4, Zen 5): MKL takes its non-Intel code path, and oneDNN's bf16 GEMM is the fast one. On
  an EPYC (Zen 5) the same product took 6.7 ms in bf16 and 31 ms through fp32 (one thread).
- Any CPU without AVX512-BF16 or AMX: oneDNN emulates bf16 products, far slower than fp32 (1.2 s against 31 ms with
  oneDNN held to AVX2 on that EPYC).
- AMX-BF16: torch's bf16 GEMM runs on the tiles, the fast one.

    bf16_matmul: "bf16"  torch's bf16 GEMM
                 "fp32"  the fp32 GEMM for bf16 CPU tensors (forward, input gradient and weight gradient); the
                         backward keeps the bf16 operands, not fp32 copies, so activation memory stays bf16
                 "auto"  "bf16" on a CPU with AMX-BF16, or with AVX512-BF16 from a vendor other than Intel (Linux
                         /proc/cpuinfo flags and vendor_id); else "fp32"
Other dtypes and devices always take torch's own GEMM.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from gpt3d.cpuinfo import cpu_info, mkl_takes_its_non_intel_path

from . import gemm

BF16_MATMUL = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=None)
def torch_bf16_gemm_is_faster() -> bool:
    """Whether torch's bf16 GEMM beats the fp32 route on this CPU (see the module docstring): AMX-BF16, or AVX512-BF16
    when MKL's fp32 GEMM does not take its Intel code path."""
    info = cpu_info()
    return bf16_gemm_beats_fp32(info.flags, info.vendor)


def bf16_gemm_beats_fp32(flags: frozenset[str] | set[str], vendor: str) -> bool:
    """The rule of torch_bf16_gemm_is_faster for these /proc/cpuinfo flags and vendor id."""
    return "amx_bf16" in flags or ("avx512_bf16" in flags and mkl_takes_its_non_intel_path(vendor))


def in_fp32(x: torch.Tensor, mode: str) -> bool:
    """Whether a GEMM on `x` under `mode` runs as an fp32 GEMM (bf16 CPU tensors only)."""
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or mode == "bf16":
        return False
    if mode == "fp32":
        return True
    if mode != "auto":
        raise ValueError(f"model.bf16_matmul must be one of {BF16_MATMUL}, got {mode!r}")
    return not torch_bf16_gemm_is_faster()


def matmul(a: torch.Tensor, b: torch.Tensor, fp32: bool) -> torch.Tensor:
    """a @ b (no autograd); with fp32, as an fp32 GEMM rounded once to a's dtype. fp32 GEMMs go to the process's
    library (gpt3d/model/gemm.py)."""
    return gemm.mm(a.float(), b.float()).to(a.dtype) if fp32 else gemm.mm(a, b)


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
        out = gemm.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out if keep_fp32 else out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad = grad_output.float()  # fp32 already when the output was kept in fp32: it is not rounded
        grad_input = gemm.mm(grad, weight.float()).to(x.dtype) if ctx.needs_input_grad[0] else None
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
    return gemm.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose bf16 CPU GEMMs follow `model.bf16_matmul` (same parameters, names and state dict)."""

    def __init__(self, in_features: int, out_features: int, bf16_matmul: str = "auto"):
        super().__init__(in_features, out_features)
        self.bf16_matmul = bf16_matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.bf16_matmul)
