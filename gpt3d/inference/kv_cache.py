"""The KV cache of one batch of requests on one pipeline stage, and the attention masks it implies.

Keys and values are stored per layer as [batch, local heads, capacity, d_head] (under tensor parallelism each rank
caches its own heads). Every cache slot also records the position of its token; left padding has position -1. A query
at position p sees the cached keys at positions 0..p of its own request, and, in a block-sparse layer, only the keys
whose (query block, key block) the layer's layout keeps: so a left-padded request decodes exactly as it would alone,
with the same positions and the same sparse pattern as in training.
"""
from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    def __init__(self, layer_ids: list[int], batch: int, heads: int, d_head: int, capacity: int, dtype: torch.dtype,
                 device: torch.device):
        shape = (batch, heads, capacity, d_head)
        self.keys = {i: torch.empty(shape, dtype=dtype, device=device) for i in layer_ids}
        self.values = {i: torch.empty(shape, dtype=dtype, device=device) for i in layer_ids}
        self.positions = torch.full((batch, capacity), -1, dtype=torch.long, device=device)
        self.capacity = capacity
        self.length = 0  # filled slots
        self._new = 0
        self._masks: dict = {}
        self._query_positions: Optional[torch.Tensor] = None
        self.attention_probs: Optional[dict] = None  # set to {} to record each layer's probabilities (diagnostics)

    def begin(self, positions: torch.Tensor) -> None:
        """Start a forward over new tokens at `positions` [batch, new] (-1 = padding)."""
        new = positions.shape[1]
        if self.length + new > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} slots cannot take {new} more tokens after {self.length}")
        self.positions[:, self.length:self.length + new] = positions
        self._new, self._query_positions, self._masks = new, positions, {}

    def commit(self) -> None:
        self.length += self._new
        self._new, self._masks = 0, {}

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values [b, h, new, d] of `layer`; returns all keys/values so far [b, h, filled, d]."""
        end = self.length + self._new
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def _allowed(self) -> torch.Tensor:
        """[b, new, filled] bool: same request, causal by position, never padding (a padding query sees itself only,
        so no softmax row is empty)."""
        end = self.length + self._new
        q = self._query_positions
        k = self.positions[:, :end]
        allowed = (k[:, None, :] >= 0) & (k[:, None, :] <= q[:, :, None])
        own_slot = torch.arange(end, device=q.device)[None, :] == torch.arange(
            self.length, end, device=q.device)[:, None]
        return allowed | ((q < 0)[:, :, None] & own_slot[None])

    def mask(self, layout: Optional[torch.Tensor], block: int) -> Optional[torch.Tensor]:
        """The attention mask of this forward for a dense layer ([b, 1, new, filled]; None when every cached key is
        visible, the common decode step without padding) or for a block-sparse layer with `layout` [local heads, nb,
        nb] ([b, heads, new, filled])."""
        key = "dense" if layout is None else ("sparse", tuple(layout.shape), block)
        if key not in self._masks and layout is None and self._new == 1:  # one query per row: the causal cut is moot
            visible = self.positions[:, :self.length + 1] >= 0
            self._masks[key] = None if bool(visible.all()) else visible[:, None, None, :]
        if key not in self._masks:
            allowed = self._allowed()
            if layout is None:
                self._masks[key] = allowed[:, None]
            else:
                end = self.length + self._new
                qb = self._query_positions.clamp(min=0) // block
                kb = self.positions[:, :end].clamp(min=0) // block
                kept = layout.to(qb.device)[:, qb[:, :, None], kb[:, None, :]].permute(1, 0, 2, 3)
                pad_query = (self._query_positions < 0)[:, None, :, None]
                self._masks[key] = (kept | pad_query) & allowed[:, None]
        return self._masks[key]
