"""The activation-memory formula against the tensors gpt3d's model really saves for backward (saved-tensor hooks).

The planner's terms (Korthikanti et al. 2022) must account for every saved tensor of a block, byte for byte, except
two that the paper's formula leaves out and that are listed here explicitly:
- LayerNorm row statistics (mean and rstd, fp32, s*b each, two LayerNorms): O(s b), negligible at scale;
- the reference softmax's s x s causal mask (bool), shared by all heads; the fused kernel computes it on the fly;
- without attention dropout, the reference softmax's second scores-sized tensor: it zeroes the masked entries with a
  masked_fill after the softmax (that copy feeds p @ v) while softmax backward keeps the first; the fused kernel
  writes one. With dropout the copy is the dropout input, so the counts coincide with the formula's three tensors.
PyTorch's CPU dropout saves its mask in the activation dtype (4 bytes here), so the CPU run uses mask_bytes=4.
"""
import pytest
import torch

from gpt3d.config import ModelConfig
from gpt3d.model.gpt import build_gpt
from gpt3d.planner.activations import layer_activation_bytes
from gpt3d.planner.sparsity import materialized_score_fraction

BATCH, SEQ, FP32 = 2, 64, 4
LAYERNORM_STATS_BYTES = 2 * 2 * BATCH * SEQ * FP32  # two LayerNorms x (mean, rstd), fp32
CAUSAL_MASK_BYTES = SEQ * SEQ  # bool


def tiny(**kw) -> ModelConfig:
    base = dict(n_layers=2, d_model=64, n_heads=4, seq_len=SEQ, vocab_size=256, vocab_pad_multiple=64,
                hidden_dropout=0.1, attn_dropout=0.1, dense_attention="softmax", kernels="reference")
    base.update(kw)
    return ModelConfig(**base)


def saved_bytes_per_layer(cfg: ModelConfig, recompute: str, seq: int = SEQ) -> float:
    """Bytes of the distinct storages the blocks save for backward (parameters excluded), per layer."""
    model = build_gpt(cfg, seed=0).train()
    if recompute == "selective":
        for block in model.blocks.values():
            block.attn.recompute_core = True
    model.recompute_full = recompute == "full"
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = []
    x = torch.randn(BATCH, seq, cfg.d_model, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model.run_blocks(x)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    return sum(n for ptr, n in storages.items() if ptr not in params) / cfg.n_layers


@pytest.mark.parametrize("recompute,extra", [
    ("none", LAYERNORM_STATS_BYTES + CAUSAL_MASK_BYTES),
    ("selective", LAYERNORM_STATS_BYTES),  # the attention core (and its mask) is recomputed
    ("full", 0),                           # only the block input
])
def test_formula_matches_saved_tensors(recompute, extra):
    cfg = tiny()
    formula = layer_activation_bytes(cfg, BATCH, SEQ, tp=1, sequence_parallel=False, recompute=recompute,
                                     act_bytes=FP32, mask_bytes=FP32)
    assert saved_bytes_per_layer(cfg, recompute) == formula + extra


def test_formula_matches_without_dropout():
    cfg = tiny(hidden_dropout=0.0, attn_dropout=0.0)
    formula = layer_activation_bytes(cfg, BATCH, SEQ, 1, False, "none", act_bytes=FP32, mask_bytes=FP32)
    reference_softmax_copy = cfg.n_heads * SEQ * SEQ * BATCH * FP32
    assert saved_bytes_per_layer(cfg, "none") == (formula + LAYERNORM_STATS_BYTES + CAUSAL_MASK_BYTES
                                                  + reference_softmax_copy)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_formula_matches_the_blocked_core(impl):
    """dense_attention=blocked saves the probabilities of the visible key blocks only (blocks of 64 rows at 160
    tokens: 64, 128 and 160 keys), the planner's materialized_score_fraction of the square; the softmax saves no
    mask (the causal mask of each block is implicit or built and dropped inside the forward)."""
    seq = 160
    cfg = tiny(hidden_dropout=0.0, attn_dropout=0.0, dense_attention="blocked", kernels=impl, seq_len=seq)
    density = materialized_score_fraction(cfg, seq)
    assert density == (64 * 64 + 64 * 128 + 32 * 160) / (seq * seq)
    formula = layer_activation_bytes(cfg, BATCH, seq, 1, False, "none", act_bytes=FP32, mask_bytes=FP32,
                                     attention_density=density)
    layer_norm_stats = 2 * 2 * BATCH * seq * FP32
    assert saved_bytes_per_layer(cfg, "none", seq) == formula + layer_norm_stats
