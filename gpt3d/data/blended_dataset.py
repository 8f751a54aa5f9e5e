"""Weighted blending of several datasets, deterministic and proportional at every prefix.

Dataset d (normalised weight w_d) gets its k-th sample at the "ideal time" (k + 0.5) / w_d; all datasets' events are merged
in time order (ties: lower dataset index first) and the first `size` taken. After any n samples dataset d has supplied
w_d * n samples to within about one, the same guarantee as Megatron's greedy error-minimising choice, but computed with
numpy sorts instead of a per-sample loop, so it scales to GPT-3's ~10^8 samples.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch.utils.data

from .errors import DataError


def blending_indices(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index[i], dataset_sample_index[i]) for i < size: sample i is sample `dataset_sample_index[i]` of dataset
    `dataset_index[i]`; each dataset's samples are used in order 0, 1, 2, ..."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError(f"data.datasets[].weight: blending weights must be positive numbers, got {list(weights)}")
    if size < 0:
        raise DataError(f"blending: size must be >= 0, got {size}")
    w = w / w.sum()
    # Enough candidate events per dataset that the first `size` in time order never run out (margin len(w) + 1).
    candidates = [np.arange(int(np.ceil(wd * size)) + len(w) + 1, dtype=np.int64) for wd in w]
    times = np.concatenate([(k + 0.5) / wd for k, wd in zip(candidates, w)])
    owners = np.concatenate([np.full(len(k), d, dtype=np.int64) for d, k in enumerate(candidates)])
    ranks = np.concatenate(candidates)
    order = np.lexsort((owners, times))[:size]
    return owners[order].astype(np.int16 if len(w) < 2 ** 15 else np.int64), ranks[order]


def samples_per_dataset(weights: Sequence[float], size: int) -> list[int]:
    """How many samples each dataset must supply for a blend of `size`."""
    dataset_index, _ = blending_indices(weights, size)
    return np.bincount(dataset_index, minlength=len(weights)).tolist()


class BlendedDataset(torch.utils.data.Dataset):
    """`size` samples drawn from `datasets` in proportion to `weights`; sample i -> numpy int64 tokens."""

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], weights: Sequence[float], size: int):
        if len(datasets) != len(weights):
            raise DataError(f"blending: {len(datasets)} datasets but {len(weights)} weights")
        self.datasets = list(datasets)
        self.weights = [float(x) for x in weights]
        self.dataset_index, self.dataset_sample_index = blending_indices(weights, size)
        needed = np.bincount(self.dataset_index, minlength=len(datasets))
        for d, (dataset, count) in enumerate(zip(self.datasets, needed)):
            if len(dataset) < count:
                raise DataError(f"blending: dataset {d} has {len(dataset)} samples but the blend needs {count}")

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for a blend of {len(self)} samples")
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]


__all__ = ["BlendedDataset", "blending_indices", "samples_per_dataset"]
