"""Packed examples: several examples in one sequence, each with its own positions and attention.

A packed row carries, per token, a position id (restarting at 0 in every example), the example (segment) it belongs
to, and a branch: 0 for a shared prefix, k > 0 for continuation k of that prefix. A token attends to earlier tokens of
its own example that are in the prefix or in its own branch, so attention never crosses examples, and several
continuations of one prompt (a reward model's K ranked completions, DPO's chosen and rejected) share the prompt's
keys and values: the prompt is encoded once. With no branches this is the block-diagonal causal mask of packed SFT.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class PackedLayout:
    positions: torch.Tensor  # [b, s] int64 position ids
    segments: torch.Tensor  # [b, s] int64 example id per token (padding: its own segments)
    branches: torch.Tensor  # [b, s] int64: 0 = shared prefix, k > 0 = continuation k
    _mask: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    def attention_mask(self) -> torch.Tensor:
        """[b, 1, s, s] bool, True where query i may attend key j (built once per layout)."""
        if self._mask is None:
            s = self.segments.shape[1]
            causal = torch.ones(s, s, dtype=torch.bool, device=self.segments.device).tril()
            same = self.segments[:, :, None] == self.segments[:, None, :]
            kb = self.branches[:, None, :]
            visible = (kb == 0) | (kb == self.branches[:, :, None])
            self._mask = (causal & same & visible).unsqueeze(1)
        return self._mask
