"""Fused GELU, tanh approximation (csrc/gelu/), with autograd (C++) and fake kernels for torch.compile.

    gelu_tanh(x, impl="fused") -> 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

GPT-2/3's activation, torch's gelu(approximate="tanh"). Any shape; float32 and bfloat16 (fp32 math, bf16 rounded
once). The kernel computes 0.5 (1 + tanh(u)) as 1 / (1 + e^(-2u)): one exponential per element where torch's CPU
kernel spends ~5x a plain copy. impl="reference" (or no kernel for x's device/dtype) runs gpt3d.kernels.reference;
impl="auto" takes the fused op where it is faster on this CPU (gpt3d/kernels/_select.py).
"""
from __future__ import annotations

import torch

from gpt3d.kernels import _ext, _select, reference

_AVAILABLE = _ext.has_op("gelu_tanh_fwd")
_DEVICES = _select.kernel_devices()


def gelu_tanh(x: torch.Tensor, impl: str = "fused") -> torch.Tensor:
    """GELU with the tanh approximation, elementwise."""
    _select.check_impl(impl, "gelu_tanh")
    _select.require_floating("gelu_tanh", "x", x)
    if _select.resolve(impl, "gelu_tanh", x) == "fused" and _select.use_fused("gelu_tanh", _AVAILABLE, _DEVICES, x):
        return torch.ops.gpt3d_C.gelu_tanh_fwd(x)
    return reference.gelu_tanh(x)


def _register() -> None:
    """Fake kernels (shapes only, for torch.compile / meta tensors) of the C++ ops; their autograd is registered in
    C++ (csrc/gelu/gelu_autograd.cpp)."""

    @torch.library.register_fake("gpt3d_C::gelu_tanh_fwd")
    def _gelu_fwd_fake(x):
        return x.new_empty(x.shape)

    @torch.library.register_fake("gpt3d_C::gelu_tanh_bwd")
    def _gelu_bwd_fake(dy, x):
        if dy.shape != x.shape or dy.dtype != x.dtype:
            raise ValueError(f"gpt3d.kernels.gelu_tanh: dy is {tuple(dy.shape)} {dy.dtype} but x is "
                             f"{tuple(x.shape)} {x.dtype}; they must match")
        return x.new_empty(x.shape)


if _AVAILABLE:
    _register()
