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


CROSS_ENTROPY_CHUNK = 1 << 20  # logits per chunk (4 MB of fp32): each chunk is read and written while in cache


def _row_chunks(logits: torch.Tensor):
    step = max(1, CROSS_ENTROPY_CHUNK // max(1, logits.shape[1]))
    return range(0, len(logits), step), step


def logsumexp_rows(logits: torch.Tensor, real_cols: int) -> torch.Tensor:
    """log sum exp over the first real_cols columns of [rows, cols] logits, in fp32, a cache-sized chunk at a time."""
    starts, step = _row_chunks(logits)
    real = logits[:, :real_cols]
    if len(logits) == 0:
        return torch.empty(0, dtype=torch.float32, device=logits.device)
    return torch.cat([torch.logsumexp(real[i:i + step].float(), dim=-1) for i in starts])


def cross_entropy_grad_(logits: torch.Tensor, lse: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor,
                        real_cols: int) -> torch.Tensor:
    """logits <- scale * (exp(logits - lse) - one-hot(labels)) over the first real_cols columns, 0 beyond; a label
    outside [0, real_cols) subtracts nothing. In place, chunk by chunk; bf16 logits are computed in fp32."""
    starts, step = _row_chunks(logits)
    in_range = (labels >= 0) & (labels < real_cols)
    index = labels.clamp(0, max(logits.shape[1] - 1, 0)).unsqueeze(-1)
    minus = -in_range.to(torch.float32).unsqueeze(-1)
    for i in starts:
        chunk = logits[i:i + step]
        g = chunk if chunk.dtype == torch.float32 else chunk.float()
        g.sub_(lse[i:i + step].unsqueeze(-1)).exp_()
        g[:, real_cols:] = 0.0  # padded columns take no part in the loss
        g.scatter_add_(-1, index[i:i + step], minus[i:i + step])
        g.mul_(scale)
        if g is not chunk:
            chunk.copy_(g)
    return logits
