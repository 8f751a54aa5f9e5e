"""Perturbing future tokens never changes earlier outputs (fused kernel and reference)."""
from __future__ import annotations

import pytest
import torch

from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.kernels.sparse_attention import block_sparse_attention
from gpt3d.sparse.layout import make_layout


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("name", ["local", "fixed", "strided", "bigbird", "dense"])
@pytest.mark.parametrize("cut", [40, 64, 100])  # inside a block, on a block edge, another block
def test_future_tokens_do_not_leak(fused_kernel, impl, name, cut):
    layout = make_layout(SparseAttentionConfig(layout=name, block=16, num_local_blocks=2), 2, 128)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 128, 16, generator=gen) for _ in range(3))
    out = block_sparse_attention(q, k, v, layout, 16, impl=impl)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[:, :, cut:] = torch.randn(t[:, :, cut:].shape, generator=gen) * 10
    out2 = block_sparse_attention(q2, k2, v2, layout, 16, impl=impl)
    assert torch.equal(out[:, :, :cut], out2[:, :, :cut])
    assert not torch.equal(out[:, :, cut:], out2[:, :, cut:])
