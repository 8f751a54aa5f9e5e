"""The PyTorch reference path: parity with dense SDPA, and the automatic fallback when the extension is missing."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.kernels.sparse_attention import block_sparse_attention
from gpt3d.sparse.layout import expand_layout_to_mask, make_layout

from sparse_helpers import dense_masked_attention


@pytest.mark.parametrize("name", ["local", "fixed", "strided", "bigbird", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_matches_dense(name, dtype):
    layout = make_layout(SparseAttentionConfig(layout=name, block=16, num_local_blocks=2), 3, 128)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 128, 16, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    out = block_sparse_attention(q, k, v, layout, 16, impl="reference")
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = dense_masked_attention(q64, k64, v64, expand_layout_to_mask(layout, 16, 128), 1 / math.sqrt(16))
    ref_grads = torch.autograd.grad(ref.sum(), (q64, k64, v64))
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(out.double(), ref, **tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **tol)


def test_fallback_without_extension_warns_once_and_matches_reference():
    """In a process where gpt3d._C cannot be imported, the module imports and the op falls back to the reference."""
    script = textwrap.dedent("""
        import sys, warnings
        sys.modules["gpt3d._C"] = None  # makes `from gpt3d import _C` raise ImportError, as when it is not built
        import torch
        from gpt3d.config.sparse import SparseAttentionConfig
        from gpt3d.kernels.sparse_attention import block_sparse_attention
        from gpt3d.sparse.layout import make_layout
        layout = make_layout(SparseAttentionConfig(layout="fixed", block=16), 2, 64)
        q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = block_sparse_attention(q, k, v, layout, 16)
            b = block_sparse_attention(q, k, v, layout, 16)
        ref = block_sparse_attention(q, k, v, layout, 16, impl="reference")
        messages = [str(w.message) for w in caught if "block_sparse_attention" in str(w.message)]
        assert len(messages) == 1, messages
        assert "using the PyTorch reference" in messages[0]
        assert torch.equal(a, ref) and torch.equal(b, ref)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
