"""Megatron-LM's checkpoint `args` (an argparse.Namespace) <-> gpt3d's ModelConfig: what a Megatron checkpoint says
about the model, and what gpt3d writes so Megatron-LM's `--use-checkpoint-args` can rebuild it."""
from __future__ import annotations

import argparse
import math

from gpt3d.config.base import ConfigError
from gpt3d.config.model import ModelConfig

from .errors import InteropError

MEGATRON_VOCAB_MULTIPLE = 128  # Megatron-LM's --make-vocab-size-divisible-by default


def megatron_padded_vocab(vocab_size: int, tp: int, multiple: int = MEGATRON_VOCAB_MULTIPLE) -> int:
    """Megatron's padded vocabulary: a multiple of multiple * tp (GPT-2 at tp1 -> 50304, tp8 -> 51200)."""
    step = multiple * tp
    return int(math.ceil(vocab_size / step) * step)


def args_from_model_config(cfg: ModelConfig, tp: int, pp: int, iteration: int) -> argparse.Namespace:
    return argparse.Namespace(
        num_layers=cfg.n_layers, hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads, kv_channels=cfg.d_head,
        ffn_hidden_size=cfg.d_ff, seq_length=cfg.seq_len, max_position_embeddings=cfg.seq_len,
        vocab_size=cfg.vocab_size, padded_vocab_size=megatron_padded_vocab(cfg.vocab_size, tp),
        make_vocab_size_divisible_by=MEGATRON_VOCAB_MULTIPLE, tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp, untie_embeddings_and_output_weights=not cfg.tie_embeddings,
        position_embedding_type="learned_absolute", normalization="LayerNorm", layernorm_epsilon=cfg.layernorm_eps,
        openai_gelu=cfg.activation == "gelu_tanh", swiglu=False, squared_relu=False, add_bias_linear=True,
        group_query_attention=False, num_query_groups=cfg.n_heads, qk_layernorm=False,
        apply_residual_connection_post_layernorm=False, hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attn_dropout, init_method_std=cfg.init_std, iteration=iteration,
        ckpt_format="torch")


# Megatron options gpt3d's model cannot express: (arg, the value gpt3d needs, what it means).
_UNSUPPORTED = (
    ("swiglu", False, "SwiGLU MLP"), ("squared_relu", False, "squared-ReLU MLP"),
    ("add_bias_linear", True, "linears without bias"), ("qk_layernorm", False, "QK LayerNorm"),
    ("apply_residual_connection_post_layernorm", False, "post-LN residual"),
    ("use_rotary_position_embeddings", False, "rotary position embeddings"),
    ("num_experts", None, "mixture of experts"),
)


def model_config_from_args(args: argparse.Namespace, source: str, vocab_pad_multiple: int = 128) -> ModelConfig:
    """gpt3d's ModelConfig from a Megatron checkpoint's `args`, refusing architectures gpt3d does not implement.
    The vocabulary is `args.vocab_size` when recorded, else the padded size (its padding rows become real ids)."""
    a = vars(args)
    problems = []
    for name, needed, what in _UNSUPPORTED:
        value = a.get(name)
        if value is not None and (bool(value) if needed is None else bool(value) != needed):
            problems.append(f"{name}={value!r} ({what})")
    if a.get("position_embedding_type", "learned_absolute") != "learned_absolute":
        problems.append(f"position_embedding_type={a['position_embedding_type']!r}")
    if a.get("normalization", "LayerNorm") != "LayerNorm":
        problems.append(f"normalization={a['normalization']!r}")
    heads = a.get("num_attention_heads")
    groups = a.get("num_query_groups") if a.get("group_query_attention") else None
    if groups not in (None, heads):
        problems.append(f"num_query_groups={groups} (grouped-query attention)")
    if problems:
        raise InteropError(f"{source}: the Megatron model uses {', '.join(problems)}, which gpt3d's GPT model does "
                           f"not implement; only GPT-2/3-style models (learned positions, LayerNorm, GELU, biases, "
                           f"multi-head attention) convert")
    d = a["hidden_size"]
    vocab = a.get("vocab_size") or a.get("padded_vocab_size")
    if not vocab:
        raise InteropError(f"{source}: args record neither vocab_size nor padded_vocab_size; pass cfg=")
    try:
        return ModelConfig(
            n_layers=a["num_layers"], d_model=d, n_heads=heads, d_head=a.get("kv_channels") or d // heads,
            d_ff=a.get("ffn_hidden_size") or 4 * d,
            seq_len=a.get("max_position_embeddings") or a["seq_length"], vocab_size=vocab,
            vocab_pad_multiple=vocab_pad_multiple,
            activation="gelu_tanh" if a.get("openai_gelu") else "gelu",
            layernorm_eps=a.get("layernorm_epsilon", 1e-5),
            hidden_dropout=a.get("hidden_dropout", 0.0) or 0.0, attn_dropout=a.get("attention_dropout", 0.0) or 0.0,
            init_std=a.get("init_method_std", 0.02) or 0.02,
            tie_embeddings=not a.get("untie_embeddings_and_output_weights", False))
    except (KeyError, ConfigError) as exc:
        raise InteropError(f"{source}: its args do not describe a valid gpt3d model: {exc}") from exc
