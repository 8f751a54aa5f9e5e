"""The model's view of the kernels: fused (csrc/) or PyTorch reference, chosen by `model.kernels`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt3d.cpuinfo import cpu_info

from .linear import bf16_gemm_beats_fp32


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, impl: str) -> torch.Tensor:
    from gpt3d import kernels
    return kernels.layer_norm(x, weight, bias, eps, impl=impl)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                   impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, layer_norm(x + residual)) in one pass; statistics in fp32 (gpt3d.kernels), the sum in the
    residual stream's dtype (the compute dtype: bf16/fp16 weights give bf16/fp16 activations throughout)."""
    from gpt3d import kernels
    return kernels.add_layer_norm(x.to(residual.dtype), residual, weight, bias, eps, impl=impl)


def gelu(x: torch.Tensor, activation: str, impl: str) -> torch.Tensor:
    """The MLP's activation: gelu_tanh through gpt3d.kernels (fused or reference by `impl`), exact gelu by torch."""
    if activation == "gelu_tanh":
        from gpt3d import kernels
        return kernels.gelu_tanh(x, impl=impl)
    return F.gelu(x)


# model.dense_attention "auto" takes the blocked explicit core up to these lengths on a CPU (no dropout, no packing
# mask), where its batched GEMMs beat torch's fused attention. Measured (docs/benchmarks.md):
# - fp32 (Intel Xeon, one thread): forward + backward 1.45-1.6x at 512, 1.16-1.2x at 1024, about even at 2048 (where
#   the saved probabilities, b h s^2 / 2 values a layer, are not worth it); forward alone 1.25x at 512 but 0.89x at
#   1024, hence the shorter limit when no gradient is needed (evaluation, scoring).
# - bf16, only where torch's bf16 GEMM is the fast one (gpt3d/model/linear.py; elsewhere the blocks' bf16 bmm would
#   be slow): on an AMD EPYC (Zen 5) forward 1.57-2.21x at 512 and 1.65x at 1024, forward + backward 2.8-3.0x at 512
#   and 1.7x at 1024 and 2048, so the training limit holds with or without a gradient.
# - bf16 on a CPU with AMX (Intel Xeon, 1 and 2 threads): torch's fused attention runs its bf16 tiles on AMX as well,
#   and the blocked forward was 0.30-0.66x of it at 512-2048; forward + backward 1.37-1.61x at 512, 0.87-1.01x at
#   1024. So training up to 512, and never forward only (generation, evaluation).
AUTO_BLOCKED_MAX_SEQ = 1024
AUTO_BLOCKED_MAX_SEQ_FORWARD_ONLY = 512
AUTO_BLOCKED_MAX_SEQ_AMX_BF16 = 512


def blocked_max_seq(dtype: torch.dtype, needs_grad: bool, flags: frozenset[str] | set[str], vendor: str) -> int:
    """auto's longest sequence for the blocked core (0: never) on a CPU with these /proc/cpuinfo flags and vendor id."""
    if dtype == torch.float32:
        return AUTO_BLOCKED_MAX_SEQ if needs_grad else AUTO_BLOCKED_MAX_SEQ_FORWARD_ONLY
    if dtype == torch.bfloat16 and bf16_gemm_beats_fp32(flags, vendor):
        if "amx_bf16" in flags:
            return AUTO_BLOCKED_MAX_SEQ_AMX_BF16 if needs_grad else 0
        return AUTO_BLOCKED_MAX_SEQ
    return 0


def _blocked_max_seq(q: torch.Tensor) -> int:
    """auto's longest sequence for the blocked core (0: never) for this query tensor."""
    if q.device.type != "cpu":
        return 0
    info = cpu_info()
    return blocked_max_seq(q.dtype, q.requires_grad, info.flags, info.vendor)


def resolve_dense_core(core: str, q: torch.Tensor, dropout_p: float, mask: torch.Tensor | None,
                       impl: str = "auto") -> str:
    """"sdpa", "softmax" or "blocked" for model.dense_attention `core` ("auto": blocked under the conditions of
    AUTO_BLOCKED_MAX_SEQ and when the blocks' softmax is the fused kernel under `impl` (model.kernels; torch's
    masked softmax per block would lose the gain), sdpa elsewhere, including every GPU)."""
    if core != "auto":
        return core
    from gpt3d.kernels.causal_attention import takes_fused_softmax
    blocked = (q.shape[-2] <= _blocked_max_seq(q) and dropout_p == 0 and mask is None
               and takes_fused_softmax(q, impl))
    return "blocked" if blocked else "sdpa"


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, core: str,
                           impl: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention over [b, h, s, d]. core "sdpa": torch's scaled_dot_product_attention (flash/efficient kernels,
    never materialises the scores); "softmax": explicit scores through gpt3d's scaled causal softmax kernel (`impl`
    fused or reference), Megatron's formulation; "blocked": the same, only for the key blocks each query block sees
    (gpt3d.kernels.block_causal_attention; no dropout); "auto": resolve_dense_core. `mask` [b, 1, s, s] (True =
    attend, causality included) replaces the causal mask for packed examples (gpt3d/model/packing.py); the explicit
    cores then compute the whole square."""
    core = resolve_dense_core(core, q, dropout_p, mask, impl)
    if mask is not None:
        if core == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        if dropout_p > 0:
            probs = F.dropout(probs, dropout_p, training=True)
        return torch.matmul(probs.to(v.dtype), v)
    if core == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    from gpt3d import kernels
    scale = q.shape[-1] ** -0.5
    if core == "blocked":
        if dropout_p > 0:
            raise ValueError("model.dense_attention=blocked has no attention dropout; use dense_attention=softmax")
        return kernels.block_causal_attention(q, k, v, scale, impl=impl)
    scores = torch.matmul(q, k.transpose(-1, -2))
    probs = kernels.scaled_causal_softmax(scores, scale, impl=impl)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p, training=True)
    return torch.matmul(probs.to(v.dtype), v)


def sparse_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor, block: int,
                            impl: str) -> torch.Tensor:
    from gpt3d.kernels.sparse_attention import block_sparse_attention
    return block_sparse_attention(q, k, v, layout, block, impl=impl)
