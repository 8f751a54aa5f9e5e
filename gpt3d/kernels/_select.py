"""Which implementation runs: the fused op of gpt3d._C, or the PyTorch reference.

The fused kernels exist for float32 and bfloat16 on CPU, and for float32, bfloat16 and float16 on CUDA in a CUDA build.
Anything else runs the reference: fp64 silently (it is what gradcheck uses), other cases (extension not built, fp16 on
the CPU, a device the build has no kernel for) with a one-time warning per op.

impl="auto" (the default of `model.kernels`) takes the fused op only where it is faster than PyTorch eager on this
kind of CPU: the table AUTO_FUSED_ON_CPU, per CPU code path (avx512, avx2, portable), lists the (op, dtype) pairs whose
fused forward and forward+backward both beat torch eager in benchmarks/kernels.py (each path measured against torch at
the same ATEN_CPU_CAPABILITY; numbers in docs/benchmarks.md). The path is the process's, read once at the first auto
decision. On CUDA, auto takes the fused kernel. Everything else under auto runs the reference, without a warning.
"""
from __future__ import annotations

import torch

from gpt3d.kernels import _ext

IMPLS = ("auto", "fused", "reference")
KERNEL_DTYPES = {"cpu": (torch.float32, torch.bfloat16), "cuda": (torch.float32, torch.bfloat16, torch.float16)}

_F32, _BF16 = (torch.float32,), (torch.bfloat16,)
_BOTH = _F32 + _BF16
# Measured 2026-12-01 (LayerNorm again after its autograd moved to C++) on an Intel Xeon (AVX-512, AVX512-BF16) with
# one thread, each path against torch at the matching ATEN_CPU_CAPABILITY, fused and eager timed alternately:
# LayerNorm 8192 x and 256 x 768/1024/2048, softmax 2x128x512 and 64x512x512 .. 4x2048x2048, tanh GELU 512x2048
# and 2048x3072, cross-entropy 1024x8192 and 512x50304 (docs/benchmarks.md). A pair is listed when the fused forward
# and forward+backward were both faster than eager at every shape measured. Re-measure on a new CPU family with
# benchmarks/kernels.py.
AUTO_FUSED_ON_CPU: dict[str, dict[str, tuple[torch.dtype, ...]]] = {
    "avx512": {"layer_norm": _BF16, "add_layer_norm": _BOTH, "scaled_masked_softmax": _BOTH,
               "scaled_causal_softmax": _BOTH, "gelu_tanh": _BOTH, "cross_entropy": _BOTH},
    "avx2": {"layer_norm": _BF16, "add_layer_norm": _BOTH, "scaled_masked_softmax": _BOTH,
             "scaled_causal_softmax": _BOTH, "gelu_tanh": _BOTH, "cross_entropy": _BOTH},
    "portable": {"layer_norm": _BOTH, "add_layer_norm": _BOTH, "scaled_masked_softmax": _BOTH,
                 "scaled_causal_softmax": _BOTH, "gelu_tanh": _BOTH, "cross_entropy": _BOTH},
}
_process_isa: list[str] = []  # the CPU path auto decides for, computed once


def check_impl(impl: str, op: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"gpt3d.kernels.{op}: impl must be 'auto', 'fused' or 'reference', got {impl!r} "
                         f"(set model.kernels to one of them)")


def process_cpu_isa() -> str:
    """The CPU code path auto decides for: the extension's at the first call ("none" when it is not built)."""
    if not _process_isa:
        from gpt3d import kernels
        _process_isa.append(kernels.cpu_isa())
    return _process_isa[0]


def resolve(impl: str, op: str, tensor: torch.Tensor) -> str:
    """"fused" or "reference" for `impl` ("auto" looks up AUTO_FUSED_ON_CPU for `op` and the tensor's dtype)."""
    check_impl(impl, op)
    if impl != "auto":
        return impl
    if tensor.device.type != "cpu":
        return "fused"
    return "fused" if tensor.dtype in AUTO_FUSED_ON_CPU.get(process_cpu_isa(), {}).get(op, ()) else "reference"


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
