"""Named presets: the GPT-3 paper's eight sizes (Table 2.1), the four GPT-2 sizes, and tiny CPU configs.

Each preset is a partial run config (model + the paper's batch size and learning rate). Table 2.1 is inconsistent in
two rows; gpt3d resolves them so the parameter count matches the paper:
- GPT-3 XL prints 24 heads x d_head 128 with d_model 2048 (24 * 128 = 3072). gpt3d keeps d_model 2048 and d_head 128, so
  16 heads: 1.316B parameters (paper: 1.3B).
- GPT-3 13B prints d_model 5140 with 40 heads (5140 / 40 is not an integer). gpt3d uses d_model 5120 = 40 x 128:
  12.85B parameters (paper: 13.0B, -1.1%); 5120 also divides by every TP degree up to 8.
Batch sizes are the paper's token counts divided by the 2048-token context (0.5M -> 256 sequences, 1M -> 512, 2M -> 1024,
3.2M -> 1536, the size Megatron-LM trained 175B with). Vocabulary: GPT-2 BPE, 50257 tokens padded to 50304.
"""
from __future__ import annotations

from typing import Any

from .base import ConfigError


def _gpt3(n_layers, d_model, n_heads, batch, lr):
    return {
        "model": {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "seq_len": 2048,
                  "vocab_size": 50257, "hidden_dropout": 0.0, "attn_dropout": 0.0, "attention_pattern": "alternating",
                  "sparse": {"layout": "fixed", "block": 64, "num_local_blocks": 4, "num_global_blocks": 1}},
        "optim": {"lr": lr, "min_lr_ratio": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
                  "grad_clip": 1.0},
        "train": {"global_batch_size": batch, "micro_batch_size": 1, "dtype": "bf16"},
    }


def _gpt2(n_layers, d_model, n_heads):
    return {
        "model": {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "seq_len": 1024, "vocab_size": 50257,
                  "hidden_dropout": 0.1, "attn_dropout": 0.1},
        # GPT-2 paper: batch 512 sequences of 1024 tokens; its learning rate was tuned per size and not published.
        "optim": {"lr": 2.5e-4},
        "train": {"global_batch_size": 512, "micro_batch_size": 1},
    }


# name -> (partial config, the paper's parameter count or None)
PRESETS: dict[str, tuple[dict[str, Any], float | None]] = {
    "gpt3-small": (_gpt3(12, 768, 12, 256, 6.0e-4), 125e6),
    "gpt3-medium": (_gpt3(24, 1024, 16, 256, 3.0e-4), 350e6),
    "gpt3-large": (_gpt3(24, 1536, 16, 256, 2.5e-4), 760e6),
    "gpt3-xl": (_gpt3(24, 2048, 16, 512, 2.0e-4), 1.3e9),
    "gpt3-2.7b": (_gpt3(32, 2560, 32, 512, 1.6e-4), 2.7e9),
    "gpt3-6.7b": (_gpt3(32, 4096, 32, 1024, 1.2e-4), 6.7e9),
    "gpt3-13b": (_gpt3(40, 5120, 40, 1024, 1.0e-4), 13.0e9),
    "gpt3-175b": (_gpt3(96, 12288, 96, 1536, 0.6e-4), 175.0e9),
    "gpt2-small": (_gpt2(12, 768, 12), 124e6),
    "gpt2-medium": (_gpt2(24, 1024, 16), 355e6),
    "gpt2-large": (_gpt2(36, 1280, 20), 774e6),
    "gpt2-xl": (_gpt2(48, 1600, 25), 1558e6),
    # CPU configs: a few hundred steps in minutes on 2 cores.
    "tiny": ({
        "model": {"n_layers": 4, "d_model": 128, "n_heads": 4, "seq_len": 128, "vocab_size": 4096,
                  "vocab_pad_multiple": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 20, "weight_decay": 0.1},
        "train": {"steps": 300, "global_batch_size": 16, "micro_batch_size": 4, "eval_interval": 100},
        "data": {"tokenizer_vocab_size": 4096},
    }, None),
    "tiny-test": ({
        "model": {"n_layers": 4, "d_model": 64, "n_heads": 4, "seq_len": 64, "vocab_size": 512,
                  "vocab_pad_multiple": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"steps": 20, "global_batch_size": 8, "micro_batch_size": 2, "eval_interval": 0,
                  "tensorboard": False, "progress": False},
        "data": {"tokenizer_vocab_size": 512},
    }, None),
}


def preset(name: str) -> dict[str, Any]:
    """The partial config of preset `name` (a deep copy)."""
    import copy
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name][0])


def paper_parameter_count(name: str) -> float | None:
    return PRESETS[name][1]
