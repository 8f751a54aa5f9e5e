"""gpt3d's canonical full (unsharded) state dict: the names and shapes every converter produces and consumes.

The names are exactly those of `build_gpt(cfg, seed).state_dict()`; the fused qkv rows are ordered per head
[n_heads, (q, k, v), d_head], and the vocabulary rows are padded to `cfg.padded_vocab_size` (padded rows are zero).
"""
from __future__ import annotations

from typing import Mapping

import torch

from gpt3d.config.model import ModelConfig

from .errors import InteropError


def layer_shapes(cfg: ModelConfig, i: int) -> dict[str, tuple[int, ...]]:
    d, a, f = cfg.d_model, cfg.attn_width, cfg.d_ff
    p = f"blocks.{i}."
    return {
        p + "ln1.weight": (d,), p + "ln1.bias": (d,),
        p + "attn.qkv.weight": (3 * a, d), p + "attn.qkv.bias": (3 * a,),
        p + "attn.proj.weight": (d, a), p + "attn.proj.bias": (d,),
        p + "ln2.weight": (d,), p + "ln2.bias": (d,),
        p + "mlp.fc1.weight": (f, d), p + "mlp.fc1.bias": (f,),
        p + "mlp.fc2.weight": (d, f), p + "mlp.fc2.bias": (d,),
    }


def gpt3d_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name of the full gpt3d model and its shape, in the model's own order."""
    d, vp = cfg.d_model, cfg.padded_vocab_size
    shapes: dict[str, tuple[int, ...]] = {"embed.tok.weight": (vp, d), "embed.pos.weight": (cfg.seq_len, d)}
    for i in range(cfg.n_layers):
        shapes.update(layer_shapes(cfg, i))
    shapes.update({"final_ln.weight": (d,), "final_ln.bias": (d,)})
    if not cfg.tie_embeddings:
        shapes["head.weight"] = (vp, d)
    return shapes


def check_gpt3d_state_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, source: str) -> None:
    """Raise one InteropError listing every missing, unexpected or mis-shaped gpt3d parameter of `sd`."""
    expected = gpt3d_shapes(cfg)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: {tuple(sd[k].shape)} != expected {expected[k]}" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if wrong:
            parts.append(f"wrong shapes [{'; '.join(wrong)}]")
        raise InteropError(f"{source}: the gpt3d state dict does not match the model config "
                           f"(n_layers={cfg.n_layers}, d_model={cfg.d_model}, padded vocab={cfg.padded_vocab_size}, "
                           f"tie_embeddings={cfg.tie_embeddings}): {'; '.join(parts)}. Pass the config the weights "
                           f"were made with, or a full unsharded gpt3d state dict (model.state_dict()).")


def fit_vocab_rows(weight: torch.Tensor, vocab_size: int, rows: int) -> torch.Tensor:
    """The first `vocab_size` rows of an embedding-like matrix, zero-padded to `rows` rows (converters' padding
    differs: gpt3d pads to its own multiple, Megatron to 128 * tp, HF not at all)."""
    if weight.shape[0] < vocab_size:
        raise InteropError(f"vocabulary matrix has {weight.shape[0]} rows, fewer than vocab_size={vocab_size}; "
                           f"set vocab_size to the tokenizer's size")
    real = weight[:vocab_size]
    if rows == vocab_size:
        return real.clone()
    pad = real.new_zeros((rows - vocab_size,) + tuple(weight.shape[1:]))
    return torch.cat([real, pad], dim=0)


def fit_vocab(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`sd` with its vocabulary matrices cut to cfg.vocab_size real rows and zero-padded to cfg.padded_vocab_size (for
    a state dict whose padding came from another framework)."""
    out = dict(sd)
    for name in ("embed.tok.weight", "head.weight"):
        if name in out:
            out[name] = fit_vocab_rows(out[name], cfg.vocab_size, cfg.padded_vocab_size)
    return out
