"""Data: byte-level BPE tokenizer, Megatron indexed datasets, preprocessing, the offline default corpus, GPT samples.

Import the submodules directly (`from gpt3d.data.gpt_dataset import build_datasets`); this package keeps its import
cheap and re-exports the main entry points lazily.
"""
from __future__ import annotations

from typing import Any

from .errors import DataError

_LAZY = {
    "Tokenizer": "tokenizer", "load_tokenizer": "tokenizer", "train_tokenizer": "tokenizer",
    "IndexedDataset": "indexed_dataset", "IndexedDatasetWriter": "indexed_dataset",
    "build_default_corpus": "corpus",
    "GPTDataset": "gpt_dataset", "build_datasets": "gpt_dataset", "tokenizer_for": "gpt_dataset",
    "BlendedDataset": "blended_dataset",
}

__all__ = ["DataError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
