"""Data config: which tokenised datasets to train on and how to split and blend them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import field, require


@dataclass
class DatasetSource:
    prefix: str = field(doc="path prefix of a Megatron-format indexed dataset (PREFIX.bin + PREFIX.idx)")
    weight: float = field(1.0, doc="blending weight")

    def __post_init__(self):
        require(bool(self.prefix.strip()), "data.datasets[].prefix", "must name PREFIX of PREFIX.bin + PREFIX.idx")
        require(not self.prefix.endswith((".bin", ".idx")), "data.datasets[].prefix",
                f"{self.prefix!r} includes the extension; give the path without .bin/.idx")
        require(self.weight > 0, "data.datasets[].weight", f"must be positive, got {self.weight}")


@dataclass
class DataConfig:
    datasets: list[DatasetSource] = field(
        default_factory=list, doc="indexed datasets to blend; empty = the offline default corpus (Python stdlib text)")
    tokenizer_dir: Optional[str] = field(
        None, doc="directory with GPT-2-format vocab.json + merges.txt; default: a BPE trained on the default corpus")
    tokenizer_vocab_size: int = field(4096, doc="vocabulary size when gpt3d trains the BPE for the default corpus")
    split: str = field("969,30,1", doc="train,valid,test proportions (Megatron syntax)")
    cache_dir: Optional[str] = field(None, doc="where the default corpus and tokenizer are built; default ~/.cache/gpt3d")

    def __post_init__(self):
        parts = self.split.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        require(len(values) == 3 and all(v >= 0 for v in values) and values[0] > 0, "data.split",
                f"expected three non-negative numbers like '969,30,1' with a positive train share, got {self.split!r}")
        require(self.tokenizer_vocab_size >= 300, "data.tokenizer_vocab_size",
                f"must be >= 300 (256 bytes + specials + merges), got {self.tokenizer_vocab_size}")

    @property
    def split_fractions(self) -> tuple[float, float, float]:
        values = [float(p) for p in self.split.split(",")]
        total = sum(values)
        return tuple(v / total for v in values)
