"""Block layouts: shape, causality, diagonal, the documented patterns, density and the element mask."""
from __future__ import annotations

import pytest
import torch

from gpt3d.config.base import ConfigError
from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.sparse.layout import check_layout, expand_layout_to_mask, layout_density, make_layout

LAYOUTS = ["local", "fixed", "strided", "bigbird", "dense"]


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("block,seq_len,heads", [(16, 64, 1), (32, 256, 4), (64, 512, 3)])
def test_layout_is_causal_with_diagonal(name, block, seq_len, heads):
    cfg = SparseAttentionConfig(layout=name, block=block, different_layout_per_head=True)
    layout = make_layout(cfg, heads, seq_len)
    nb = seq_len // block
    assert layout.dtype == torch.bool and tuple(layout.shape) == (heads, nb, nb)
    assert not layout.triu(1).any()
    assert layout.diagonal(dim1=1, dim2=2).all()
    check_layout(layout, heads, seq_len, block)


def test_local_is_a_band():
    layout = make_layout(SparseAttentionConfig(layout="local", block=16, num_local_blocks=3), 2, 16 * 6)[0]
    expected = torch.tensor([[1 if 0 <= i - j < 3 else 0 for j in range(6)] for i in range(6)], dtype=torch.bool)
    assert torch.equal(layout, expected)


def test_fixed_matches_sparse_transformer_pattern():
    # windows of 4 blocks; the last block of each window (index 3, 7) is the summary seen by every later query.
    layout = make_layout(SparseAttentionConfig(layout="fixed", block=16, num_local_blocks=4, num_global_blocks=1),
                         1, 16 * 10)[0]
    for i in range(10):
        expected = {j for j in range(10) if j // 4 == i // 4 and j <= i} | {j for j in (3, 7) if j <= i}
        if i >= 8:  # the short last window (blocks 8, 9) gets its own summary block 9 (DeepSpeed's rule)
            expected |= {9} if i >= 9 else set()
        assert set(layout[i].nonzero().flatten().tolist()) == expected, i


def test_fixed_summary_blocks_vary_per_head():
    cfg = SparseAttentionConfig(layout="fixed", block=16, num_local_blocks=4, num_global_blocks=1,
                                different_layout_per_head=True)
    layout = make_layout(cfg, 4, 16 * 16)
    last_row = [set(layout[h, 15, :12].nonzero().flatten().tolist()) for h in range(4)]
    assert last_row == [{3, 7, 11}, {2, 6, 10}, {1, 5, 9}, {0, 4, 8}]


def test_strided_pattern():
    layout = make_layout(SparseAttentionConfig(layout="strided", block=16, num_local_blocks=2, stride=3), 1, 16 * 8)[0]
    for i in range(8):
        expected = {j for j in range(i + 1) if i - j < 2 or (i - j) % 3 == 0}
        assert set(layout[i].nonzero().flatten().tolist()) == expected


def test_bigbird_is_seeded_and_has_global_and_random_blocks():
    cfg = SparseAttentionConfig(layout="bigbird", block=16, num_local_blocks=2, num_global_blocks=1,
                                num_random_blocks=2, seed=7)
    a, b = make_layout(cfg, 2, 16 * 16), make_layout(cfg, 2, 16 * 16)
    assert torch.equal(a, b)
    assert torch.equal(a[0], a[1])  # same pattern per head unless asked otherwise
    assert a[:, :, 0].all()          # global first block
    band = make_layout(SparseAttentionConfig(layout="local", block=16, num_local_blocks=2), 1, 16 * 16)[0]
    extra = (a[0] & ~band).sum(dim=1)
    extra[1:] -= 1                   # the global column
    assert extra[4:].eq(2).all()     # rows with enough earlier blocks get exactly num_random_blocks
    other = make_layout(SparseAttentionConfig(**{**cfg.__dict__, "seed": 8}), 2, 16 * 16)
    assert not torch.equal(a, other)
    per_head = make_layout(SparseAttentionConfig(**{**cfg.__dict__, "different_layout_per_head": True}), 2, 256)
    assert not torch.equal(per_head[0], per_head[1])


def test_density():
    dense = make_layout(SparseAttentionConfig(layout="dense", block=32), 2, 256)
    assert layout_density(dense) == pytest.approx(1.0)
    assert layout_density(dense, block=32) == pytest.approx(1.0)
    cfg = SparseAttentionConfig(layout="local", block=32, num_local_blocks=2)
    local = make_layout(cfg, 1, 32 * 8)
    mask = expand_layout_to_mask(local, 32, 256)
    assert layout_density(local, block=32) == pytest.approx(mask.sum().item() / (256 * 257 / 2))
    assert layout_density(local) == pytest.approx((7 + 0.5 * 8) / 32)
    # fixed layouts get sparser as the sequence grows (the band is fixed, only summary blocks add up)
    fixed = [layout_density(make_layout(SparseAttentionConfig(layout="fixed", block=32), 1, s), 32)
             for s in (1024, 4096)]
    assert fixed[1] < fixed[0] < 1


def test_expand_layout_to_mask_is_blockwise_and_causal():
    layout = torch.tensor([[[1, 0], [1, 1]], [[1, 0], [0, 1]]], dtype=torch.bool)
    mask = expand_layout_to_mask(layout, 16, 32)
    assert tuple(mask.shape) == (2, 32, 32)
    causal = torch.ones(32, 32, dtype=torch.bool).tril()
    assert torch.equal(mask[0], causal)
    assert not mask[1, 16:, :16].any() and torch.equal(mask[1, 16:, 16:], causal[:16, :16])


def test_bad_sizes_raise_clear_errors():
    cfg = SparseAttentionConfig(layout="fixed", block=32)
    with pytest.raises(ValueError, match="seq_len=100 is not a multiple of the sparse block size 32"):
        make_layout(cfg, 2, 100)
    with pytest.raises(ConfigError, match="must be 16, 32 or 64"):
        SparseAttentionConfig(block=48)
    with pytest.raises(ValueError, match="does not cover seq_len"):
        expand_layout_to_mask(make_layout(cfg, 1, 64), 32, 96)
    layout = make_layout(cfg, 2, 128)
    with pytest.raises(ValueError, match="does not match"):
        check_layout(layout, 3, 128, 32)
    with pytest.raises(ValueError, match="above the diagonal"):
        check_layout(torch.ones(2, 4, 4, dtype=torch.bool), 2, 128, 32)
    with pytest.raises(ValueError, match="misses diagonal"):
        check_layout(torch.zeros(2, 4, 4, dtype=torch.bool), 2, 128, 32)
    with pytest.raises(ValueError, match="torch.bool"):
        check_layout(layout.int(), 2, 128, 32)
