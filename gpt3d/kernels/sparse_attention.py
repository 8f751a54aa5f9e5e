"""Block-sparse causal attention (GPT-3's sparse layers): fused kernel op with autograd, and its PyTorch reference.

    out = block_sparse_attention(q, k, v, layout, block)       # q, k, v [batch, heads, seq, d_head]

`layout` is a bool [heads, seq/block, seq/block] block layout (gpt3d.sparse.layout.make_layout) or its
`compile_layout(layout)` form. The fused path (csrc/sparse_attention) visits only the key blocks of each query block
with an online softmax and never builds the seq x seq score matrix; it needs the compact layout (CSR by query-block
row for the forward, CSC by key-block column for the backward), which `compile_layout` builds once per layout and caches.

The fused path is the custom op `gpt3d::block_sparse_attention` (fake implementation + autograd, so it works under
torch.compile). Without the compiled extension the reference runs instead, after a one-time warning; impl="reference"
forces it.
"""
from __future__ import annotations

import collections
import hashlib
import math
from dataclasses import dataclass

import torch

from gpt3d.kernels import _ext
from gpt3d.sparse.layout import check_layout, expand_layout_to_mask

__all__ = ["block_sparse_attention", "block_sparse_attention_reference", "compile_layout", "CompiledLayout"]

_SUPPORTED_DTYPES = {"cpu": (torch.float32, torch.bfloat16), "cuda": (torch.float32, torch.bfloat16, torch.float16)}
_OP_NAME = "sparse_attention_forward"


@dataclass(frozen=True, eq=False)
class CompiledLayout:
    """A checked causal block layout plus its compact forms (int32, on `row_ptr.device`).

    Head h, query block i attends to key blocks col_idx[row_ptr[h*nb+i] : row_ptr[h*nb+i+1]] (ascending);
    key block j is seen by query blocks row_idx[col_ptr[h*nb+j] : col_ptr[h*nb+j+1]].
    """
    layout: torch.Tensor   # bool [heads, nb, nb] on the CPU
    block: int
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor

    @property
    def heads(self) -> int:
        return self.layout.shape[0]

    @property
    def seq_len(self) -> int:
        return self.layout.shape[1] * self.block


_CACHE: "collections.OrderedDict[tuple, CompiledLayout]" = collections.OrderedDict()
_CACHE_SIZE = 64


def _compress(layout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ptr [heads*nb + 1], idx [nnz]) listing, for every (head, row), the True columns in ascending order."""
    heads, nb, _ = layout.shape
    counts = layout.reshape(heads * nb, nb).sum(dim=1)
    ptr = torch.zeros(heads * nb + 1, dtype=torch.int32)
    ptr[1:] = counts.cumsum(0)
    idx = layout.reshape(heads * nb, nb).nonzero()[:, 1].to(torch.int32)  # nonzero is row-major: rows then columns
    return ptr, idx


@torch.compiler.disable
def compile_layout(layout: torch.Tensor, block: int, device: torch.device | str = "cpu") -> CompiledLayout:
    """Check `layout` and build its CSR/CSC forms on `device`, cached by the layout's content."""
    if isinstance(layout, CompiledLayout):
        return layout
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.dim() != 3:
        raise ValueError(f"layout must be a torch.bool tensor [heads, nb, nb], got "
                         f"{getattr(layout, 'dtype', type(layout).__name__)} {tuple(getattr(layout, 'shape', ()))}; "
                         f"build it with gpt3d.sparse.layout.make_layout()")
    lay = layout.detach().cpu().contiguous()
    device = torch.device(device)
    key = (tuple(lay.shape), block, str(device), hashlib.sha1(lay.numpy().tobytes()).hexdigest())
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    heads, nb, _ = lay.shape
    check_layout(lay, heads, nb * block, block)
    row_ptr, col_idx = _compress(lay)
    col_ptr, row_idx = _compress(lay.transpose(1, 2))
    compiled = CompiledLayout(lay, block, *(t.to(device) for t in (row_ptr, col_idx, col_ptr, row_idx)))
    _CACHE[key] = compiled
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled


def _check_inputs(q, k, v, layout, block) -> None:
    """One clear error per bad input, before any work."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"block_sparse_attention: {name} must be a 4-D tensor [batch, heads, seq, d_head], got "
                             f"{tuple(getattr(t, 'shape', ())) or type(t).__name__}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"block_sparse_attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}; they must all be [batch, heads, seq, d_head]")
    if q.dtype not in _SUPPORTED_DTYPES.get(q.device.type, ()) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"block_sparse_attention: dtype must be float32 or bfloat16, or float16 on CUDA (one for q, "
                        f"k, v), got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}; cast with .float() or .bfloat16()")
    if block not in (16, 32, 64):
        raise ValueError(f"block_sparse_attention: block must be 16, 32 or 64, got {block}")
    heads, seq, d_head = q.shape[1], q.shape[2], q.shape[3]
    if seq % block != 0:
        raise ValueError(f"block_sparse_attention: seq_len={seq} is not a multiple of the block size {block}; pad "
                         f"the sequence to {-(-seq // block) * block} or use another block size")
    if not 1 <= d_head <= 256:
        raise ValueError(f"block_sparse_attention: d_head must be in [1, 256], got {d_head}")
    lay = layout.layout if isinstance(layout, CompiledLayout) else layout
    if isinstance(layout, CompiledLayout) and layout.block != block:
        raise ValueError(f"block_sparse_attention: the compiled layout was built for block {layout.block}, not {block}")
    if not isinstance(lay, torch.Tensor) or lay.dtype != torch.bool:
        raise ValueError(f"block_sparse_attention: layout must be a torch.bool tensor [heads, nb, nb], got "
                         f"{getattr(lay, 'dtype', type(lay).__name__)}; build it with make_layout()")
    if tuple(lay.shape) != (heads, seq // block, seq // block):
        raise ValueError(f"block_sparse_attention: layout shape {tuple(lay.shape)} does not match q: expected "
                         f"(heads={heads}, {seq // block}, {seq // block}) for seq={seq}, block={block}; under tensor "
                         f"parallelism pass this rank's heads: layout[head_start:head_end]")


def block_sparse_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout, block: int,
                                     scale: float | None = None) -> torch.Tensor:
    """Dense scores masked by the layout expanded to elements (+ causal); fp32 math, result in q's dtype."""
    _check_inputs(q, k, v, layout, block)
    lay = layout.layout if isinstance(layout, CompiledLayout) else layout
    if not isinstance(layout, CompiledLayout):  # (a CompiledLayout was checked when built)
        check_layout(lay.cpu(), q.shape[1], q.shape[2], block)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = expand_layout_to_mask(lay.to(q.device), block, q.shape[2])
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v.float()).to(q.dtype)


# ---- the fused custom op -------------------------------------------------------------------------------------------

@torch.library.custom_op("gpt3d::block_sparse_attention", mutates_args=())
def _fused_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                   col_ptr: torch.Tensor, row_idx: torch.Tensor, block: int, scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.gpt3d_C.sparse_attention_forward(q, k, v, row_ptr, col_idx, block, scale)


@_fused_forward.register_fake
def _(q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("gpt3d::block_sparse_attention_backward", mutates_args=())
def _fused_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    lse: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, col_ptr: torch.Tensor,
                    row_idx: torch.Tensor, block: int, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.ops.gpt3d_C.sparse_attention_backward(grad_out, q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx,
                                                       block, scale)


@_fused_backward.register_fake
def _(grad_out, q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx, block, scale):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx)
    ctx.block, ctx.scale = block, scale
    ctx.set_materialize_grads(True)


def _backward(ctx, grad_out, _grad_lse):
    # lse is an auxiliary output for the backward only; block_sparse_attention never returns it, so its grad is unused.
    q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx = ctx.saved_tensors
    dq, dk, dv = _fused_backward(grad_out, q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx, ctx.block, ctx.scale)
    return dq, dk, dv, None, None, None, None, None, None


_fused_forward.register_autograd(_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result  # torch.compile runs it eagerly once instead of tracing the import machinery
def _fused_available(device_type: str) -> bool:
    if not _ext.has_op(_OP_NAME):
        return False
    if device_type == "cpu":
        return True
    return device_type == "cuda" and bool(getattr(_ext.extension(), "with_cuda", False))


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout, block: int,
                           scale: float | None = None, impl: str = "fused") -> torch.Tensor:
    """Causal block-sparse attention. q, k, v: [batch, heads, seq, d_head] float32 or bfloat16 (or float16 on CUDA).

    layout: bool [heads, seq/block, seq/block] (lower-block-triangular with the diagonal) or a CompiledLayout.
    scale: score scale, default 1/sqrt(d_head). impl: "fused" (the C++/CUDA kernel; the reference with a one-time
    warning when the extension is not built; "auto" is the same: the block-sparse kernel skips the masked blocks that the
    dense reference computes, on every CPU path) or "reference" (dense PyTorch math).
    """
    if impl not in ("auto", "fused", "reference"):
        raise ValueError(f"block_sparse_attention: impl must be 'auto', 'fused' or 'reference', got {impl!r}")
    _check_inputs(q, k, v, layout, block)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if impl == "reference":
        return block_sparse_attention_reference(q, k, v, layout, block, scale)
    if not _fused_available(q.device.type):
        _ext.warn_fallback("block_sparse_attention")
        return block_sparse_attention_reference(q, k, v, layout, block, scale)
    compiled = layout
    if not isinstance(compiled, CompiledLayout) or compiled.row_ptr.device != q.device:
        compiled = compile_layout(layout if isinstance(layout, torch.Tensor) else layout.layout, block, q.device)
    out, _lse = _fused_forward(q, k, v, compiled.row_ptr, compiled.col_idx, compiled.col_ptr, compiled.row_idx,
                               block, scale)
    return out
