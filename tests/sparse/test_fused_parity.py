"""The fused kernel's output and q/k/v gradients equal dense attention with the equivalent element mask."""
from __future__ import annotations

import math

import pytest
import torch

from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.kernels.sparse_attention import block_sparse_attention
from gpt3d.sparse.layout import expand_layout_to_mask, make_layout

from sparse_helpers import cpu_isas, dense_masked_attention

LAYOUTS = ["local", "fixed", "strided", "bigbird", "dense"]
# (batch, heads, seq, d_head, block, dtype)
CASES = [
    (2, 1, 64, 16, 16, torch.float32),
    (1, 4, 256, 64, 32, torch.float32),
    (1, 2, 256, 64, 64, torch.float32),
    (2, 3, 192, 16, 16, torch.bfloat16),
    (1, 2, 128, 64, 64, torch.bfloat16),
    (1, 4, 256, 40, 32, torch.bfloat16),  # head dim that is not a multiple of the SIMD width
]
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


def _check_against_dense(name, batch, heads, seq, d_head, block, dtype, seed=0):
    cfg = SparseAttentionConfig(layout=name, block=block, num_local_blocks=2, num_global_blocks=1, stride=3,
                                different_layout_per_head=True)
    layout = make_layout(cfg, heads, seq)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seq, d_head, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    grad_out = torch.randn(batch, heads, seq, d_head, generator=gen).to(dtype)
    out = block_sparse_attention(q, k, v, layout, block)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = dense_masked_attention(q64, k64, v64, expand_layout_to_mask(layout, block, seq), 1 / math.sqrt(d_head))
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), grad_out.double())
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), ref, **TOLERANCE[dtype])
    for got, want, what in zip(grads, ref_grads, "qkv"):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, **TOLERANCE[dtype], msg=lambda m: f"grad {what}: {m}")


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}h{c[1]}s{c[2]}d{c[3]}blk{c[4]}-{str(c[5])[6:]}")
def test_fused_matches_dense(fused_kernel, name, case):
    _check_against_dense(name, *case)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_cpu_instruction_set(fused_kernel, monkeypatch, isa, dtype):
    monkeypatch.setenv("GPT3D_CPU_ISA", isa)
    assert torch.ops.gpt3d_C.sparse_attention_cpu_isa() == isa
    _check_against_dense("fixed", 2, 2, 128, 64, 32, dtype)
    _check_against_dense("bigbird", 1, 2, 96, 24, 16, dtype)


def test_non_contiguous_inputs_and_custom_scale(fused_kernel):
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 128, 3, 2, 32, generator=gen)  # [batch, seq, 3, heads, d]: the layout a fused qkv gives
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    layout = make_layout(SparseAttentionConfig(layout="fixed", block=16), 2, 128)
    out = block_sparse_attention(q, k, v, layout, 16, scale=0.3)
    ref = dense_masked_attention(q, k, v, expand_layout_to_mask(layout, 16, 128), 0.3)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_head_slice_of_a_layout_matches_the_full_heads(fused_kernel):
    """Tensor parallelism hands each rank layout[h0:h1] with its heads: results equal the full computation's slice."""
    layout = make_layout(SparseAttentionConfig(layout="bigbird", block=16, different_layout_per_head=True), 4, 128)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 4, 128, 16, generator=gen) for _ in range(3))
    full = block_sparse_attention(q, k, v, layout, 16)
    part = block_sparse_attention(q[:, 2:], k[:, 2:], v[:, 2:], layout[2:], 16)
    torch.testing.assert_close(part, full[:, 2:], atol=0, rtol=0)
