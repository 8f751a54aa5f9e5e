"""Pure-PyTorch references for every fused kernel in gpt3d.kernels: the parity baseline of the tests and the fallback
when the extension (or a kernel for the tensor's device/dtype) is missing.

bf16/fp16 inputs are computed in fp32 and rounded once at the end, as the fused kernels do; fp64 stays fp64 (gradcheck).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: at least fp32."""
    return torch.promote_types(dtype, torch.float32)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dimension, statistics in at least fp32, output in x's dtype."""
    ct = compute_dtype(x.dtype)
    y = F.layer_norm(x.to(ct), (x.shape[-1],), weight.to(ct), bias.to(ct), eps)
    return y.to(x.dtype)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, layer_norm(x + residual)); the sum is rounded to x's dtype before it is normalised."""
    total = x + residual
    return total, layer_norm(total, weight, bias, eps)


def causal_mask(sq: int, sk: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [sq, sk], True = masked out: query q sees keys [0, q + 1 + sk - sq) (bottom-right aligned)."""
    return torch.ones(sq, sk, dtype=torch.bool, device=device).triu(diagonal=sk - sq + 1)


def scaled_masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(scale * scores) over the last dimension where mask is False; masked entries and fully masked rows are 0.

    Masked entries are filled with the dtype's lowest finite value rather than -inf, so a fully masked row never
    produces NaN (it comes out uniform and is then zeroed) and its gradient is exactly 0.
    """
    ct = compute_dtype(scores.dtype)
    x = scores.to(ct) * scale
    if mask is not None:
        x = x.masked_fill(mask, torch.finfo(ct).min)
    y = torch.softmax(x, dim=-1)
    if mask is not None:
        y = y.masked_fill(mask, 0.0)
    return y.to(scores.dtype)


def scaled_causal_softmax(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """scaled_masked_softmax with the causal mask of the last two dimensions (see causal_mask)."""
    return scaled_masked_softmax(scores, causal_mask(scores.shape[-2], scores.shape[-1], scores.device), scale)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation: torch's own (fp64 stays fp64; bf16 is computed in fp32 by torch and rounded once)."""
    return F.gelu(x, approximate="tanh")
