"""Block-sparse attention layout config (GPT-3's locally banded sparse layers)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import field, require


@dataclass
class SparseAttentionConfig:
    layout: Literal["local", "fixed", "strided", "bigbird", "dense"] = field(
        "fixed", doc="block layout of the sparse layers (causal): local band, Sparse-Transformer fixed, strided, "
                     "bigbird (local + global + random) or dense")
    block: int = field(32, doc="block size in tokens (16, 32 or 64); seq_len must be a multiple")
    num_local_blocks: int = field(4, doc="local band width in blocks (local, fixed, bigbird); fixed: stride length")
    num_global_blocks: int = field(1, doc="summary blocks per stride (fixed) / global blocks (bigbird)")
    stride: int = field(4, doc="strided layout: attend to every stride-th block before the local band")
    num_random_blocks: int = field(1, doc="bigbird: random blocks per query block row")
    seed: int = field(0, doc="bigbird: seed of the random blocks")
    different_layout_per_head: bool = field(False, doc="vary the summary/random blocks across heads")

    def __post_init__(self):
        require(self.block in (16, 32, 64), "model.sparse.block", f"must be 16, 32 or 64, got {self.block}")
        for name in ("num_local_blocks", "stride"):
            require(getattr(self, name) >= 1, f"model.sparse.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("num_global_blocks", "num_random_blocks"):
            require(getattr(self, name) >= 0, f"model.sparse.{name}", f"must be >= 0, got {getattr(self, name)}")
        if self.layout == "fixed":
            require(self.num_global_blocks <= self.num_local_blocks, "model.sparse.num_global_blocks",
                    f"{self.num_global_blocks} summary blocks exceed the stride of {self.num_local_blocks} blocks")

    def check_seq_len(self, seq_len: int, key: str) -> None:
        require(seq_len % self.block == 0, key,
                f"{seq_len} is not a multiple of the sparse block size {self.block}; "
                f"use a multiple (e.g. {((seq_len + self.block - 1) // self.block) * self.block}) or set model.sparse.block")
