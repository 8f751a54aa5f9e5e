"""Per-layer analytical FLOPs: the invariant against Megatron's formulas, recomputation and block-sparse scaling."""
import math

import pytest

from gpt3d.config import ModelConfig, load_config
from gpt3d.model.flops import (head_forward_flops, layer_forward_flops, layer_training_flops, megatron_model_flops,
                               model_training_flops, recompute_forward_flops)

DENSE_PRESETS = ["gpt3-small", "gpt3-xl", "gpt3-13b", "gpt3-175b", "gpt2-small", "tiny"]


def dense(name: str) -> ModelConfig:
    return load_config(None, [f"preset={name}", "model.attention_pattern=dense"]).model


@pytest.mark.parametrize("name", DENSE_PRESETS)
@pytest.mark.parametrize("batch,seq_len", [(1, 128), (8, 1024), (3, 2048)])
def test_sum_of_layers_equals_megatron_formula(name, batch, seq_len):
    cfg = dense(name)
    assert cfg.d_ff == 4 * cfg.d_model and cfg.attn_width == cfg.d_model
    ours = model_training_flops(cfg, batch, seq_len)
    assert math.isclose(ours, megatron_model_flops(cfg, batch, seq_len), rel_tol=1e-12)


def test_full_recompute_equals_megatron_eq3():
    """Narayanan et al. eq. (3): 96 B s l h^2 (1 + s/(6h) + V/(16 l h))."""
    cfg = dense("gpt3-175b")
    b, s, l, h, v = 1536, 2048, cfg.n_layers, cfg.d_model, cfg.padded_vocab_size
    eq3 = 96.0 * b * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
    assert math.isclose(model_training_flops(cfg, b, s, recompute="full"), eq3, rel_tol=1e-12)


def test_layer_terms_hand_computed():
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, seq_len=32, vocab_size=100, vocab_pad_multiple=64)
    b, s, d = 2, 32, 64
    f = layer_forward_flops(cfg, b, s)
    assert f.qkv == 2 * b * s * d * 3 * d
    assert f.attention_core == 2 * 2 * b * s * s * d  # full s^2 square, causal not halved
    assert f.out_proj == 2 * b * s * d * d
    assert f.fc1 == f.fc2 == 2 * b * s * d * 4 * d
    assert head_forward_flops(cfg, b, s) == 2 * b * s * d * 128  # padded vocabulary 128
    assert recompute_forward_flops(f, "none") == 0
    assert recompute_forward_flops(f, "selective") == f.attention_core
    assert recompute_forward_flops(f, "full") == f.total
    assert layer_training_flops(cfg, b, s, "selective") == 3 * f.total + f.attention_core


def test_general_widths_use_attn_width_and_d_ff():
    cfg = ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=32, d_ff=100, seq_len=16, vocab_size=64)
    f = layer_forward_flops(cfg, 1, 16)
    assert f.qkv == 2 * 16 * 64 * 3 * 128 and f.out_proj == 2 * 16 * 128 * 64
    assert f.fc1 == f.fc2 == 2 * 16 * 64 * 100


def test_sparse_layers_scale_core_by_density():
    cfg = load_config("gpt3-175b").model  # alternating: 48 dense, 48 sparse layers
    dense_layer = layer_forward_flops(cfg, 1, 2048)
    sparse_layer = layer_forward_flops(cfg, 1, 2048, attention_density=0.25)
    assert sparse_layer.attention_core == 0.25 * dense_layer.attention_core
    assert sparse_layer.qkv == dense_layer.qkv and sparse_layer.fc2 == dense_layer.fc2
    total = model_training_flops(cfg, 1, 2048, sparse_density=0.25)
    expected = megatron_model_flops(cfg, 1, 2048) - 48 * 3 * 0.75 * dense_layer.attention_core
    assert math.isclose(total, expected, rel_tol=1e-12)


def test_bad_input():
    cfg = load_config("gpt3-175b").model
    with pytest.raises(ValueError, match="sparse_density"):
        model_training_flops(cfg, 1, 2048)
    with pytest.raises(ValueError, match="density must be in"):
        layer_forward_flops(cfg, 1, 2048, attention_density=0.0)
    with pytest.raises(ValueError, match="recompute must be one of"):
        layer_training_flops(cfg, 1, 2048, recompute="some")
