"""Bad input gets one clear error before any work (Python wrapper and the C++ op itself)."""
from __future__ import annotations

import pytest
import torch

from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.kernels.sparse_attention import block_sparse_attention, compile_layout
from gpt3d.sparse.layout import make_layout


def _qkv(seq=128, heads=2, d=16, dtype=torch.float32):
    return tuple(torch.randn(1, heads, seq, d, dtype=dtype) for _ in range(3))


LAYOUT = make_layout(SparseAttentionConfig(layout="fixed", block=32), 2, 128)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_wrapper_errors(fused_kernel, impl):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="seq_len=120 is not a multiple of the block size 32"):
        block_sparse_attention(*_qkv(seq=120), LAYOUT, 32, impl=impl)
    with pytest.raises(ValueError, match=r"layout shape \(2, 4, 4\) does not match q: expected \(heads=3, 4, 4\)"):
        block_sparse_attention(*_qkv(heads=3), LAYOUT, 32, impl=impl)
    with pytest.raises(ValueError, match=r"layout shape \(2, 4, 4\) does not match q: expected \(heads=2, 8, 8\)"):
        block_sparse_attention(q, k, v, LAYOUT, 16, impl=impl)
    with pytest.raises(TypeError, match="dtype must be float32 or bfloat16.*torch.float16"):
        block_sparse_attention(*_qkv(dtype=torch.float16), LAYOUT, 32, impl=impl)
    with pytest.raises(TypeError, match="one for q, k, v"):
        block_sparse_attention(q, k.bfloat16(), v, LAYOUT, 32, impl=impl)
    with pytest.raises(ValueError, match="shapes differ"):
        block_sparse_attention(q, k[:, :1], v, LAYOUT, 32, impl=impl)
    with pytest.raises(ValueError, match="4-D tensor"):
        block_sparse_attention(q[0], k[0], v[0], LAYOUT, 32, impl=impl)
    with pytest.raises(ValueError, match="block must be 16, 32 or 64"):
        block_sparse_attention(q, k, v, LAYOUT, 8, impl=impl)
    with pytest.raises(ValueError, match="torch.bool"):
        block_sparse_attention(q, k, v, LAYOUT.float(), 32, impl=impl)
    with pytest.raises(ValueError, match="impl must be 'auto', 'fused' or 'reference'"):
        block_sparse_attention(q, k, v, LAYOUT, 32, impl="triton")


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_non_causal_layout_is_refused(fused_kernel, impl):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="above the diagonal"):
        block_sparse_attention(q, k, v, torch.ones(2, 4, 4, dtype=torch.bool), 32, impl=impl)
    with pytest.raises(ValueError, match="misses diagonal"):
        block_sparse_attention(q, k, v, torch.zeros(2, 4, 4, dtype=torch.bool), 32, impl=impl)


def test_raw_op_checks(fused_kernel):
    q, k, v = _qkv()
    c = compile_layout(LAYOUT, 32)
    op = torch.ops.gpt3d_C.sparse_attention_forward
    with pytest.raises(RuntimeError, match="not a multiple of the block"):
        op(*_qkv(seq=120), c.row_ptr, c.col_idx, 32, 0.25)
    with pytest.raises(RuntimeError, match="layout does not match q"):
        op(*_qkv(heads=3), c.row_ptr, c.col_idx, 32, 0.25)
    with pytest.raises(RuntimeError, match="dtype must be float32 or bfloat16"):
        op(*_qkv(dtype=torch.float16), c.row_ptr, c.col_idx, 32, 0.25)
    with pytest.raises(RuntimeError, match="must be int32"):
        op(q, k, v, c.row_ptr.long(), c.col_idx, 32, 0.25)
    future = c.col_idx.clone()
    future[0] = 3  # query block 0 of head 0 attending to key block 3
    with pytest.raises(RuntimeError, match="breaks causality"):
        op(q, k, v, c.row_ptr, future, 32, 0.25)
    with pytest.raises(RuntimeError, match="GPT3D_CPU_ISA=sse9 is unknown"):
        import os
        os.environ["GPT3D_CPU_ISA"] = "sse9"
        try:
            op(q, k, v, c.row_ptr, c.col_idx, 32, 0.25)
        finally:
            del os.environ["GPT3D_CPU_ISA"]
