"""Causal attention with explicit scores that skips the masked half: the queries are cut into blocks of `block` rows,
and block i computes scores only against keys [0, end of block i), the keys it can see. Each block's scores go
through the scaled causal softmax (gpt3d.kernels: fused or reference by `impl`; the causal mask of a block is the
bottom-right-aligned one of its [rows, keys] scores), then multiply V. Backward runs the same blocks, adding each
block's key and value gradients in place into the visible prefix.

    block_causal_attention(q, k, v, scale, impl="fused", block=64) -> [b, h, s, d]

q, k, v are [b, h, s, d]. The saved probabilities hold the visible scores only: b h (s^2 + s block) / 2 values
against s^2 unblocked (torch's fused attention keeps none and recomputes them in backward).

Two implementations compute the same blocks. fp32 on a CPU with the fused kernels takes the C++ op
(csrc/attention/: one head at a time on each thread, so the head's K, V and block scores stay in its cache, with the
BLAS GEMM torch links and the softmax rows of the fused softmax kernel). Everything else (bf16, `impl` reference, a
torch without BLAS) runs the blocks over all heads at once as torch batched GEMMs here in Python.

Why: on a CPU, torch's fused attention (flash attention for CPU) works on small tiles and runs well below the GEMM
rate, while these blocks are plain GEMMs. Measured (fp32, 8 heads, d 64, docs/benchmarks.md): the batched-GEMM form
was 1.6x faster than torch's forward + backward at s 512 and one thread, 1.2x at 1024, about even at 2048; the C++
op on an Intel Xeon (AMX), 2 threads, 2.1x / 1.4x / 1.16x at 512 / 1024 / 2048 (one thread 2.0x / 1.5x / 1.18x).
Block 64 was the fastest of 64 / 128 / 256 at every length: smaller blocks skip more of the masked triangle.
"""
from __future__ import annotations

import torch

import functools

from gpt3d.kernels import _ext, _select, reference
from gpt3d.kernels.softmax import _AVAILABLE, _DEVICES

DEFAULT_BLOCK = 64


def block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, impl: str = "fused",
                           block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """softmax(scale * q k^T, causal) v over [b, h, s, d], the masked key blocks skipped."""
    _select.check_impl(impl, "block_causal_attention")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"gpt3d.kernels.block_causal_attention: q, k and v must share one [batch, heads, seq, "
                         f"head_dim] shape, got {tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}")
    if block < 1:
        raise ValueError(f"gpt3d.kernels.block_causal_attention: block must be at least 1, got {block}")
    _select.require_floating("block_causal_attention", "q", q)
    fused = (_select.resolve(impl, "scaled_causal_softmax", q) == "fused"
             and _select.use_fused("scaled_causal_softmax", _AVAILABLE, _DEVICES, q))
    if fused and takes_native_kernel(q):
        return _NativeBlockCausalAttention.apply(q, k, v, float(scale), block)
    return _BlockCausalAttention.apply(q, k, v, float(scale), block, fused)


@functools.lru_cache(maxsize=None)
def _native_available() -> bool:
    return (_ext.has_op("block_causal_attention_fwd")
            and bool(torch.ops.gpt3d_C.block_causal_attention_has_blas()))


def takes_native_kernel(q: torch.Tensor) -> bool:
    """Whether blocks over this tensor run the C++ op (fp32 on a CPU, extension built, torch with a BLAS), given
    that the fused softmax was chosen."""
    return q.dtype == torch.float32 and q.device.type == "cpu" and _native_available()


def takes_fused_softmax(q: torch.Tensor, impl: str) -> bool:
    """Whether the blocks' softmax would run gpt3d's fused kernel for this tensor under `impl` (no fallback
    warning: for choosing a core)."""
    return (_select.resolve(impl, "scaled_causal_softmax", q) == "fused" and _AVAILABLE
            and q.device.type in _DEVICES and q.dtype in _select.KERNEL_DTYPES.get(q.device.type, ()))


def _softmax_forward(scores: torch.Tensor, scale: float, fused: bool) -> torch.Tensor:
    if fused:
        return torch.ops.gpt3d_C.scaled_causal_softmax_fwd(scores, scale)
    return reference.scaled_causal_softmax(scores, scale)


def _softmax_backward(dprobs: torch.Tensor, probs: torch.Tensor, scale: float, fused: bool) -> torch.Tensor:
    """d(scores) of probs = softmax(scale * scores): scale * p * (dp - sum(dp * p)); masked keys have p = 0."""
    if fused:
        return torch.ops.gpt3d_C.scaled_softmax_bwd(dprobs, probs, scale, True)
    ct = reference.compute_dtype(probs.dtype)
    p, dp = probs.to(ct), dprobs.to(ct)
    return (scale * p * (dp - (dp * p).sum(-1, keepdim=True))).to(probs.dtype)


def _row_blocks(seq: int, block: int):
    for start in range(0, seq, block):
        yield start, min(start + block, seq)


def block_probs_per_head(seq: int, block: int = DEFAULT_BLOCK) -> int:
    """Probabilities one head saves: each query block's rows times the keys it sees (the C++ op's
    block_probs_per_head, csrc/attention/block_attention_args.h; the planner's blocked_score_fraction)."""
    return sum((end - start) * end for start, end in _row_blocks(seq, block))


class _NativeBlockCausalAttention(torch.autograd.Function):
    """The blocks by gpt3d_C::block_causal_attention_{fwd,bwd} (csrc/attention/), which read q, k, v and the output
    gradient in place (strided views of the QKV output included) and write the output in [b, s, h, d] memory."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float, block: int):
        out, probs = torch.ops.gpt3d_C.block_causal_attention_fwd(q, k, v, scale, block)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale, ctx.block = scale, block
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, probs = ctx.saved_tensors
        dq, dk, dv = torch.ops.gpt3d_C.block_causal_attention_bwd(dout, q, k, v, probs, ctx.scale, ctx.block)
        return dq, dk, dv, None, None


class _BlockCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale: float, block: int, fused: bool):
        b, h, s, d = q.shape
        # [b * h, s, d]: contiguous batched matrices for bmm (q, k, v arrive as strided views of the QKV output).
        q3, k3, v3 = (t.reshape(b * h, s, d).contiguous() for t in (q, k, v))
        out, probs = torch.empty_like(q3), []
        for start, end in _row_blocks(s, block):
            p = _softmax_forward(torch.bmm(q3[:, start:end], k3[:, :end].transpose(1, 2)), scale, fused)
            torch.bmm(p, v3[:, :end], out=out[:, start:end])
            probs.append(p)
        ctx.save_for_backward(q3, k3, v3, *probs)
        ctx.scale, ctx.block, ctx.fused, ctx.shape = scale, block, fused, (b, h, s, d)
        return out.view(b, h, s, d)

    @staticmethod
    def backward(ctx, dout):
        q3, k3, v3, *probs = ctx.saved_tensors
        b, h, s, d = ctx.shape
        do3 = dout.reshape(b * h, s, d)
        dq = torch.empty_like(q3)
        dk, dv = torch.zeros_like(k3), torch.zeros_like(v3)
        for p, (start, end) in zip(probs, _row_blocks(s, ctx.block)):
            do_block = do3[:, start:end]
            dv[:, :end].baddbmm_(p.transpose(1, 2), do_block)
            ds = _softmax_backward(torch.bmm(do_block, v3[:, :end].transpose(1, 2)), p, ctx.scale, ctx.fused)
            torch.bmm(ds, k3[:, :end], out=dq[:, start:end])
            dk[:, :end].baddbmm_(ds.transpose(1, 2), q3[:, start:end])
        return dq.view(b, h, s, d), dk.view(b, h, s, d), dv.view(b, h, s, d), None, None, None


def _register() -> None:
    """Fake kernels (shapes only, for torch.compile / meta tensors) of the C++ ops; their autograd is
    _NativeBlockCausalAttention."""

    @torch.library.register_fake("gpt3d_C::block_causal_attention_fwd")
    def _fwd_fake(q, k, v, scale, block):
        b, h, s, d = q.shape
        return (q.new_empty((b, s, h, d)).transpose(1, 2),
                q.new_empty((b * h, block_probs_per_head(s, block))))

    @torch.library.register_fake("gpt3d_C::block_causal_attention_bwd")
    def _bwd_fake(dout, q, k, v, probs, scale, block):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


if _ext.has_op("block_causal_attention_fwd"):
    _register()
