"""Which library runs gpt3d's fp32 GEMMs on a CPU: torch's own (MKL on x86), or oneDNN.

MKL takes its fast code paths on Intel CPUs only. On an AMD EPYC (Zen 5, AVX-512), one thread, torch's fp32 GEMM ran
[2048x512]x[512x1536] at 0.094 TFLOP/s and oneDNN's at 0.217 (the input gradient 0.097 against 0.213, the weight
gradient 0.097 against 0.182); on an Intel Xeon MKL is the fast one. oneDNN is reached through
torch.ops.mkldnn._linear_pointwise (x W^T + b; the op torch's Inductor CPU backend calls), with the backward written
here, so the choice changes which library multiplies and nothing else: both accumulate in fp32, in different orders.

GPT3D_FP32_GEMM (environment, read once per process): auto (default) | torch | onednn. auto takes oneDNN on a CPU with
AVX-512 from a vendor other than Intel (MKL's non-Intel path stops at AVX2 there), when torch was built with it.
Other dtypes, devices and torch without oneDNN always take torch's GEMM. Like the kernels' code path (GPT3D_CPU_ISA),
this is a property of the machine a process runs on, not of a model, so it is not a config field.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from gpt3d.cpuinfo import cpu_info, mkl_takes_its_non_intel_path

FP32_GEMM = ("auto", "torch", "onednn")


def onednn_beats_mkl(flags: frozenset[str] | set[str], vendor: str) -> bool:
    """auto's rule for these /proc/cpuinfo flags and vendor id."""
    return "avx512f" in flags and mkl_takes_its_non_intel_path(vendor)


@functools.lru_cache(maxsize=None)
def fp32_gemm_library() -> str:
    """"onednn" or "torch": GPT3D_FP32_GEMM resolved for this process."""
    choice = os.environ.get("GPT3D_FP32_GEMM", "auto")
    if choice not in FP32_GEMM:
        raise ValueError(f"GPT3D_FP32_GEMM must be one of {FP32_GEMM}, got {choice!r} (unset it for auto)")
    available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if choice == "auto":
        info = cpu_info()
        choice = "onednn" if onednn_beats_mkl(info.flags, info.vendor) else "torch"
    return "onednn" if choice == "onednn" and available else "torch"


def _onednn(*tensors: torch.Tensor) -> bool:
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
            and fp32_gemm_library() == "onednn")


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _onednn_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as oneDNN's x W^T. Its x must be contiguous (torch copies it otherwise); W may have any strides. A weight
    gradient dy^T x has a = dy^T, a transposed view of [tokens, out]: as x it would be copied whole (the output head's
    [2048, 50304] gradient: a 412 MB transposed copy, 12% of a 6-layer fp32 step). Where that copy is the larger one,
    the product is taken as (b^T a^T)^T instead, which copies b^T ([in, tokens]) and returns a transposed view,
    read once more by whoever consumes it (autograd's accumulation, or mm_into's copy or add)."""
    if a.dim() == 2 and b.is_contiguous() and a.t().is_contiguous() and not a.is_contiguous():
        out_dim, tokens, in_dim = a.shape[0], a.shape[1], b.shape[1]
        if out_dim * tokens > in_dim * tokens + in_dim * out_dim:
            return _onednn_linear(b.t(), a, None).t()
    return _onednn_linear(a, b.t(), None)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-D b (a may have leading dimensions); no autograd through the oneDNN route. The result may be a
    transposed view (see _onednn_product)."""
    if _onednn(a, b):
        return _onednn_product(a, b)
    return a @ b


def mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """out = a @ b, or out += a @ b when `accumulate` (2-D; torch's GEMM writes `out` in place, oneDNN's result is
    copied or added: a pass over `out`, small beside the GEMM)."""
    if _onednn(a, b):
        product = _onednn_product(a, b)
        if accumulate:
            out.add_(product)
        else:
            out.copy_(product)
    elif accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


class _OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b by oneDNN, and its backward by oneDNN: dx = dy W, dW = dy^T x, db = sum of dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_input = mm(grad_output, weight) if ctx.needs_input_grad[0] else None
        rows = grad_output.reshape(-1, grad_output.shape[-1])
        grad_weight = mm(rows.t(), x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear, by the process's fp32 GEMM library (autograd included). Under CPU autocast it is F.linear, which
    autocast casts to its lower precision."""
    if _onednn(x, weight) and not torch.is_autocast_enabled("cpu"):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
