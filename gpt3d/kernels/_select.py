"""Which implementation runs: the fused op of gpt3d._C, or the PyTorch reference.

The fused kernels exist for float32 and bfloat16 on CPU, and for float32, bfloat16 and float16 on CUDA in a CUDA build.
Anything else runs the reference: fp64 silently (it is what gradcheck uses), other cases (extension not built, fp16 on
the CPU, a device the build has no kernel for) with a one-time warning per op.
"""
from __future__ import annotations

import torch

from gpt3d.kernels import _ext

IMPLS = ("fused", "reference")
KERNEL_DTYPES = {"cpu": (torch.float32, torch.bfloat16), "cuda": (torch.float32, torch.bfloat16, torch.float16)}


def check_impl(impl: str, op: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"gpt3d.kernels.{op}: impl must be 'fused' or 'reference', got {impl!r} "
                         f"(set model.kernels to one of them)")


def kernel_devices() -> tuple[str, ...]:
    """Device types the built extension has kernels for (empty when it is not built)."""
    ext = _ext.extension()
    if ext is None:
        return ()
    return ("cpu", "cuda") if getattr(ext, "with_cuda", False) else ("cpu",)


def use_fused(op: str, available: bool, devices: tuple[str, ...], tensor: torch.Tensor) -> bool:
    """True when the fused kernel can take `tensor`; otherwise warns once (unless fp64) and returns False.

    `available` and `devices` are computed once at import so torch.compile sees constants, not extension look-ups.
    """
    if available and tensor.device.type in devices and tensor.dtype in KERNEL_DTYPES[tensor.device.type]:
        return True
    if tensor.dtype != torch.float64 and not torch.compiler.is_compiling():
        _ext.warn_fallback(op)
    return False


def require_floating(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"gpt3d.kernels.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"gpt3d.kernels.{op}: {name} has dtype {t.dtype} but must be floating point "
                        f"(float32 or bfloat16 take the fused kernel); cast it with .float()")
