"""The compute dtype of `train.dtype`, and the start-up check that the device really runs it.

Mixed precision follows Megatron-LM (docs/precision.md): weights are held in the compute dtype (bf16/fp16), gradients
accumulate into fp32 main-gradient buckets (gpt3d/parallel/data_parallel.py), and fp32 master weights with the Adam
moments live in the optimizer (gpt3d/parallel/optimizer.py). A dtype the device cannot run is refused here, before
any work starts: never a silent fp32 fallback.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """The configured dtype cannot run on this device (bad input: reported before any work starts)."""


def compute_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def probe(dtype: torch.dtype, device: torch.device) -> None:
    """A tiny forward and backward of every kind of op the model runs (GEMM, LayerNorm, softmax, GELU, embedding) in
    `dtype` on `device`; raises whatever the device raises."""
    x = torch.randn(2, 4, 8, device=device).to(dtype).requires_grad_()
    w = torch.randn(8, 8, device=device).to(dtype).requires_grad_()
    h = F.gelu(F.layer_norm(F.linear(x, w), (8,)), approximate="tanh")
    h = h + F.embedding(torch.tensor([[1, 2, 3, 4]], device=device), w)
    probs = torch.softmax(h.float(), dim=-1).to(dtype)
    (probs * h).float().sum().backward()
    if not (torch.isfinite(x.grad.float()).all() and torch.isfinite(w.grad.float()).all()):
        raise RuntimeError("non-finite gradients from finite inputs")


def require_dtype_runs(name: str, dtype: torch.dtype, device: torch.device) -> None:
    """Raise one PrecisionError naming the dtype, the device and the fix when `device` cannot train in `dtype`."""
    if dtype == torch.float32:
        return
    fix = f"use another train.dtype (fp32 runs everywhere) or a device that supports {name}"
    native_bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype == torch.bfloat16 and not native_bf16:
        raise PrecisionError(f"train.dtype={name}: {torch.cuda.get_device_name(device)} has no native bf16; {fix}")
    try:
        probe(dtype, device)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PrecisionError(f"train.dtype={name}: this {device.type} device cannot train in {dtype} ({reason}); "
                             f"{fix}") from None
