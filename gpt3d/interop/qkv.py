"""Fused-QKV row orders. gpt3d and Megatron (checkpoint_version >= 2) store per head [heads, (q, k, v), d_head];
HF GPT-2 stores [(q, k, v), heads, d_head]; legacy Megatron checkpoint_version 0 stored [(q, k, v), heads, d_head]
and 1.0 stored [heads, d_head, (q, k, v)]. Leading dims are the rows; trailing dims (the input features) ride along."""
from __future__ import annotations

import torch


def separate_to_interleaved(t: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """[(q, k, v), heads, d_head, ...] -> [heads, (q, k, v), d_head, ...] (flattened rows)."""
    rest = tuple(t.shape[1:])
    return t.reshape((3, n_heads, d_head) + rest).transpose(0, 1).reshape((3 * n_heads * d_head,) + rest)


def interleaved_to_separate(t: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """[heads, (q, k, v), d_head, ...] -> [(q, k, v), heads, d_head, ...] (flattened rows)."""
    rest = tuple(t.shape[1:])
    return t.reshape((n_heads, 3, d_head) + rest).transpose(0, 1).reshape((3 * n_heads * d_head,) + rest)


def head_dim_last_to_interleaved(t: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """[heads, d_head, (q, k, v), ...] (Megatron checkpoint_version 1.0) -> [heads, (q, k, v), d_head, ...]."""
    rest = tuple(t.shape[1:])
    return t.reshape((n_heads, d_head, 3) + rest).transpose(1, 2).reshape((3 * n_heads * d_head,) + rest)
