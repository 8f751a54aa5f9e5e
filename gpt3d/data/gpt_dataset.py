"""GPT training samples: fixed-length windows packed across document boundaries, Megatron-style; split and blended.

A `GPTDataset` turns the documents of one split of an indexed dataset into `num_samples` samples of seq_len + 1 tokens
(inputs are sample[:-1], labels sample[1:]). As in Megatron-LM:
- document index: the split's documents, shuffled anew each epoch, for as many epochs as the samples need;
- sample index: where each sample starts (position in the document index, token offset); consecutive samples share one
  token, so the concatenated stream is cut into windows of seq_len with the last token repeated as the next first;
- shuffle index: a permutation of the samples.
Everything follows from (seed, split) alone, so every rank builds the same datasets without communicating.

Splits are contiguous ranges of documents (each sequence of the indexed dataset is a document, as in megatron-core) in
the proportions of `DataConfig.split`. Several datasets are blended by weight (blended_dataset.py); each contributes its
own train/valid/test split.

Resuming needs no data state: the position is the number of samples consumed. Training takes global batch t as samples
[t * G, (t + 1) * G) of the train dataset (G = global batch size), so a run resumed at step t rebuilds the datasets from
the same config and seed and continues at sample t * G.
"""
from __future__ import annotations

import os
import zlib
from typing import Optional, Sequence

import numpy as np
import torch.utils.data

from ..config.data import DataConfig
from .blended_dataset import BlendedDataset, samples_per_dataset
from .corpus import build_default_corpus, default_cache_dir
from .errors import DataError
from .indexed_dataset import IndexedDataset
from .tokenizer import Tokenizer, load_tokenizer

SPLITS = ("train", "valid", "test")


def split_document_ranges(num_documents: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """Megatron's get_split_indices: [start, end) document ranges per split, rounded, the last ending at num_documents."""
    bounds = [0]
    for fraction in fractions:
        bounds.append(bounds[-1] + int(round(fraction * float(num_documents))))
    excess = bounds[-1] - num_documents
    bounds = [0] + [max(0, b - excess) for b in bounds[1:]]
    return [(bounds[i], bounds[i + 1]) for i in range(len(fractions))]


class GPTDataset(torch.utils.data.Dataset):
    """`num_samples` packed samples of seq_len + 1 tokens from `document_ids` of `indexed`; item i -> int64 array."""

    def __init__(self, indexed: IndexedDataset, document_ids: np.ndarray, num_samples: int, seq_len: int, seed: int,
                 name: str = "train"):
        if seq_len < 1:
            raise DataError(f"train.seq_len: must be >= 1, got {seq_len}")
        self.indexed = indexed
        self.document_ids = np.asarray(document_ids, dtype=np.int64)
        self.num_samples = int(num_samples)
        self.seq_len = int(seq_len)
        self.name = name
        lengths = indexed.sequence_lengths[self.document_ids].astype(np.int64)
        self.tokens_per_epoch = int(lengths.sum())
        if self.num_samples > 0 and self.tokens_per_epoch < seq_len + 1:
            raise DataError(f"{indexed.prefix}: the {name} split has {self.tokens_per_epoch} tokens in "
                            f"{len(self.document_ids)} documents, fewer than one sample of seq_len + 1 = {seq_len + 1} "
                            f"tokens; use more data, a larger {name} share in data.split, or a shorter train.seq_len")
        # The stream must hold num_samples * seq_len + 1 tokens (the last sample's extra label token).
        needed = self.num_samples * self.seq_len + 1
        self.num_epochs = -(-needed // self.tokens_per_epoch) if self.num_samples else 0
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))
        self.doc_idx = (np.concatenate([rng.permutation(self.document_ids) for _ in range(self.num_epochs)])
                        if self.num_epochs else np.zeros(0, dtype=np.int64))
        self.sample_idx = self._build_sample_index()
        self.shuffle_idx = rng.permutation(self.num_samples)

    def _build_sample_index(self) -> np.ndarray:
        """Row j = (position in doc_idx, token offset) where sample j starts; row num_samples marks the last end."""
        lengths = self.indexed.sequence_lengths[self.doc_idx].astype(np.int64)
        starts_of_docs = np.concatenate([[0], np.cumsum(lengths)])
        starts = np.arange(self.num_samples + 1, dtype=np.int64) * self.seq_len
        # side="right" skips empty documents: the owner is the doc with start <= position < its end.
        positions = np.searchsorted(starts_of_docs, starts, side="right") - 1
        return np.stack([positions, starts - starts_of_docs[positions]], axis=1)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for the {self.name} dataset of {self.num_samples} samples")
        return self.unshuffled_sample(int(self.shuffle_idx[i]))

    def unshuffled_sample(self, j: int) -> np.ndarray:
        """Tokens [j * seq_len, (j + 1) * seq_len] of the packed stream (doc_idx order)."""
        (first_doc, first_offset), (last_doc, last_offset) = self.sample_idx[j], self.sample_idx[j + 1]
        if first_doc == last_doc:
            return self.indexed.get(int(self.doc_idx[first_doc]), int(first_offset),
                                    int(last_offset - first_offset + 1)).astype(np.int64)
        pieces = [self.indexed.get(int(self.doc_idx[first_doc]), int(first_offset))]
        pieces += [self.indexed.get(int(self.doc_idx[d])) for d in range(first_doc + 1, last_doc)]
        pieces.append(self.indexed.get(int(self.doc_idx[last_doc]), 0, int(last_offset) + 1))
        return np.concatenate(pieces).astype(np.int64)


def open_checked(prefix: str, vocab_size: int) -> IndexedDataset:
    """Open an indexed dataset and check its token ids fit model.vocab_size (full scan up to 1 GB, sampled beyond)."""
    indexed = IndexedDataset(prefix)
    if indexed.dtype.kind not in "iu":
        raise DataError(f"{indexed.data_path}: holds {indexed.dtype.name} values, not token ids; preprocess text with "
                        f"`gpt3d preprocess`")
    max_id = indexed.max_token_id()
    if max_id >= vocab_size:
        raise DataError(f"{indexed.data_path}: token id {max_id} >= model.vocab_size {vocab_size}: the data was "
                        f"tokenised with a larger vocabulary; set model.vocab_size to at least {max_id + 1} (the "
                        f"tokenizer's vocabulary size)")
    return indexed


def resolve_cache_dir(data_cfg: DataConfig, cache_dir: Optional[str]) -> str:
    return cache_dir or data_cfg.cache_dir or default_cache_dir()


def _sources(data_cfg: DataConfig, cache_dir: Optional[str]) -> list[tuple[str, float]]:
    if data_cfg.datasets:
        return [(os.path.expanduser(s.prefix), s.weight) for s in data_cfg.datasets]
    if data_cfg.tokenizer_dir is not None:
        raise DataError("data.tokenizer_dir is set but data.datasets is empty: the default corpus is tokenised with its "
                        "own BPE; preprocess your data with that tokenizer (`gpt3d preprocess --tokenizer DIR`) and list "
                        "it in data.datasets, or unset data.tokenizer_dir")
    prefix, _ = build_default_corpus(resolve_cache_dir(data_cfg, cache_dir), data_cfg.tokenizer_vocab_size)
    return [(prefix, 1.0)]


def _check_num_samples(num_samples: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(num_samples) - set(SPLITS))
    if unknown:
        raise DataError(f"build_datasets: unknown split(s) {unknown}; expected keys among {list(SPLITS)}")
    for name, count in num_samples.items():
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise DataError(f"build_datasets: num_samples[{name!r}] must be a non-negative integer, got {count!r}")
    return {name: int(num_samples.get(name, 0)) for name in SPLITS}


def _split_dataset(indexed: IndexedDataset, data_cfg: DataConfig, name: str, num_samples: int, seq_len: int,
                   seed: int) -> GPTDataset:
    start, end = split_document_ranges(len(indexed), data_cfg.split_fractions)[SPLITS.index(name)]
    if num_samples > 0 and end <= start:
        raise DataError(f"{indexed.prefix}: data.split={data_cfg.split!r} leaves the {name} split empty ({len(indexed)} "
                        f"documents in all) but {num_samples} {name} samples were requested; raise the {name} share "
                        f"of data.split, add data, or request no {name} samples (e.g. train.eval_interval=0)")
    return GPTDataset(indexed, np.arange(start, end, dtype=np.int64), num_samples, seq_len, seed, name)


def build_datasets(data_cfg: DataConfig, seq_len: int, seed: int, num_samples: dict[str, int], vocab_size: int,
                   cache_dir: Optional[str] = None) -> dict[str, torch.utils.data.Dataset]:
    """{'train', 'valid', 'test'} -> dataset of exactly num_samples[split] samples (0 when absent); item i is a numpy int64
    array of seq_len + 1 tokens. No data.datasets: the default corpus (built once under the cache dir).

    Every check (files, vocabulary, empty or too-small splits) runs before any dataset is returned.
    """
    counts = _check_num_samples(num_samples)
    if vocab_size < 1:
        raise DataError(f"model.vocab_size: must be >= 1, got {vocab_size}")
    sources = _sources(data_cfg, cache_dir)
    indexed = [open_checked(prefix, vocab_size) for prefix, _ in sources]
    weights = [weight for _, weight in sources]
    datasets: dict[str, torch.utils.data.Dataset] = {}
    for name in SPLITS:
        if len(indexed) == 1:
            datasets[name] = _split_dataset(indexed[0], data_cfg, name, counts[name], seq_len, seed)
            continue
        per_dataset = samples_per_dataset(weights, counts[name])
        parts = [_split_dataset(ds, data_cfg, name, n, seq_len, seed) for ds, n in zip(indexed, per_dataset)]
        datasets[name] = BlendedDataset(parts, weights, counts[name])
    return datasets


def tokenizer_for(data_cfg: DataConfig, cache_dir: Optional[str] = None) -> Tokenizer:
    """The tokenizer of the configured data: data.tokenizer_dir, else the default corpus' BPE (built if needed)."""
    if data_cfg.tokenizer_dir is not None:
        return load_tokenizer(os.path.expanduser(data_cfg.tokenizer_dir))
    if data_cfg.datasets:
        raise DataError("data.tokenizer_dir: not set, but data.datasets lists your own data; set it to the directory "
                        "(vocab.json + merges.txt) the data was preprocessed with")
    _, tokenizer_dir = build_default_corpus(resolve_cache_dir(data_cfg, cache_dir), data_cfg.tokenizer_vocab_size)
    return load_tokenizer(tokenizer_dir)


__all__ = ["GPTDataset", "build_datasets", "tokenizer_for", "split_document_ranges", "open_checked", "SPLITS"]
