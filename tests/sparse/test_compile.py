"""The fused op under torch.compile matches eager, forward and backward."""
from __future__ import annotations

import torch

from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.kernels.sparse_attention import block_sparse_attention, compile_layout
from gpt3d.sparse.layout import make_layout


def _inputs():
    gen = torch.Generator().manual_seed(4)
    return tuple(torch.randn(1, 2, 128, 32, generator=gen).requires_grad_() for _ in range(3))


def _eager_and_compiled(fn, layout):
    q, k, v = _inputs()
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    out = fn(q, k, v, layout)
    grads = torch.autograd.grad(out, (q, k, v), g)
    compiled = torch.compile(fn, backend="aot_eager")  # a bool layout is compiled to CSR outside the graph
    out_c = compiled(q, k, v, layout)
    grads_c = torch.autograd.grad(out_c, (q, k, v), g)
    torch.testing.assert_close(out_c, out, atol=0, rtol=0)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def _attention_block(q, k, v, layout):
    return block_sparse_attention(q * 1.5, k, v, layout, 16) * 2 + 1


def test_compile_with_bool_layout(fused_kernel):
    layout = make_layout(SparseAttentionConfig(layout="fixed", block=16), 2, 128)
    _eager_and_compiled(_attention_block, layout)


def test_compile_fullgraph_with_compiled_layout(fused_kernel):
    """A precompiled layout (what a model keeps per layer) traces without graph breaks, with inductor."""
    layout = compile_layout(make_layout(SparseAttentionConfig(layout="bigbird", block=16), 2, 128), 16)
    q, k, v = _inputs()
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(6))
    out = _attention_block(q, k, v, layout)
    grads = torch.autograd.grad(out, (q, k, v), g)
    compiled = torch.compile(_attention_block, fullgraph=True)
    out_c = compiled(q, k, v, layout)
    grads_c = torch.autograd.grad(out_c, (q, k, v), g)
    torch.testing.assert_close(out_c, out, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_opcheck(fused_kernel):
    """torch.library.opcheck: schema, fake tensor, autograd registration agree with the real kernel."""
    from gpt3d.kernels import sparse_attention as sa
    layout = compile_layout(make_layout(SparseAttentionConfig(layout="local", block=16), 2, 64), 16)
    q, k, v = (t.detach()[:, :, :64].clone().requires_grad_() for t in _inputs())
    torch.library.opcheck(sa._fused_forward, (q, k, v, layout.row_ptr, layout.col_idx, layout.col_ptr,
                                              layout.row_idx, 16, 0.25))
