"""Decoding settings of `gpt3d generate` and of the inference engine's Python API (gpt3d/inference/engine.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import field, require


@dataclass
class SamplingConfig:
    max_new_tokens: int = field(64, doc="tokens generated per prompt (at most; a stop ends a completion earlier)")
    temperature: float = field(1.0, doc="softmax temperature; 0 = greedy decoding (argmax)")
    top_k: Optional[int] = field(None, doc="sample among the k most likely tokens only (None: no limit)")
    top_p: Optional[float] = field(None, doc="nucleus sampling: the smallest set of most likely tokens whose "
                                             "probability reaches top_p (after top_k), None: no limit")
    seed: int = field(0, doc="sampling seed; the noise of request i at step t depends only on (seed, i, t), so a "
                             "seeded run gives the same tokens in every parallel layout and batch size")
    eos_token_id: Optional[int] = field(None, doc="a completion ends after this token (None: never)")
    logprobs: bool = field(False, doc="also return the model's log-probability (temperature 1, no filtering) of "
                                      "every generated token")

    def __post_init__(self):
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature >= 0, "temperature", f"must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None:
            require(self.top_k >= 1, "top_k", f"must be >= 1 (or unset), got {self.top_k}")
        if self.top_p is not None:
            require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (or unset), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
