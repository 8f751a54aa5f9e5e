"""Block-level layouts of GPT-3's sparse attention layers (causal).

A layout is a bool tensor [heads, nb, nb] with nb = seq_len / block: layout[h, i, j] says whether the queries of block i
attend to the keys of block j in head h. Layouts are lower-block-triangular (causal) and always keep the diagonal block,
inside which the element-level causal mask applies. They are per head, so tensor parallelism slices
layout[head_start:head_end].

Patterns (all causal):
- dense:   every block j <= i.
- local:   the band of the last `num_local_blocks` blocks (j in (i - num_local_blocks, i]).
- fixed:   the Sparse Transformer "fixed" pattern as DeepSpeed's FixedSparsityConfig(attention='unidirectional'):
           blocks are grouped in windows of `num_local_blocks`; a query attends to the earlier blocks of its own window
           and to the last `num_global_blocks` ("summary") blocks of every earlier window. With
           different_layout_per_head the summary blocks shift per head (as DeepSpeed's num_different_global_patterns).
- strided: the Sparse Transformer "strided" pattern: the local band plus every `stride`-th block before it
           (j with (i - j) % stride == 0).
- bigbird: local band + the first `num_global_blocks` blocks (global) + `num_random_blocks` random earlier blocks per
           row, drawn from a generator seeded with `seed` (per head when different_layout_per_head).
"""
from __future__ import annotations

import torch

from gpt3d.config.sparse import SparseAttentionConfig

__all__ = ["make_layout", "layout_density", "expand_layout_to_mask", "check_layout"]


def make_layout(cfg: SparseAttentionConfig, n_heads: int, seq_len: int) -> torch.Tensor:
    """Block layout [n_heads, seq_len/block, seq_len/block] (bool) of `cfg` for causal attention."""
    if n_heads < 1:
        raise ValueError(f"make_layout: n_heads must be >= 1, got {n_heads}")
    if seq_len < 1 or seq_len % cfg.block != 0:
        raise ValueError(
            f"make_layout: seq_len={seq_len} is not a multiple of the sparse block size {cfg.block}; use a multiple "
            f"(e.g. {max(1, -(-seq_len // cfg.block)) * cfg.block}) or change model.sparse.block")
    nb = seq_len // cfg.block
    builders = {"dense": _dense, "local": _local, "fixed": _fixed, "strided": _strided, "bigbird": _bigbird}
    layout = torch.zeros(n_heads, nb, nb, dtype=torch.bool)
    for h in range(n_heads):
        builders[cfg.layout](cfg, h, layout[h])
    causal = torch.ones(nb, nb, dtype=torch.bool).tril()
    layout &= causal                                   # builders may overshoot; causality is enforced here, once
    layout |= torch.eye(nb, dtype=torch.bool)          # a query always sees itself
    return layout


def _dense(cfg, h, lay):
    lay.fill_(True)


def _band(lay, width):
    nb = lay.shape[0]
    idx = torch.arange(nb)
    lay |= (idx[:, None] - idx[None, :] < width) & (idx[:, None] >= idx[None, :])


def _local(cfg, h, lay):
    _band(lay, cfg.num_local_blocks)


def _fixed(cfg, h, lay):
    nb, w, g = lay.shape[0], cfg.num_local_blocks, cfg.num_global_blocks
    idx = torch.arange(nb)
    lay |= (idx[:, None] // w) == (idx[None, :] // w)  # same window (the causal cut comes later)
    if g == 0:
        return
    patterns = max(1, w // g) if cfg.different_layout_per_head else 1
    first = w - (1 + h % patterns) * g                 # first summary block inside each window
    full_windows_end = nb - nb % w
    for start in range(first, full_windows_end, w):
        lay[start:, start:start + g] = True            # every later query sees this window's summary blocks
    if full_windows_end < nb:                          # a short last window still gets g summary blocks
        start = min(full_windows_end + first, nb - g)
        lay[start:, start:start + g] = True


def _strided(cfg, h, lay):
    nb = lay.shape[0]
    idx = torch.arange(nb)
    _band(lay, cfg.num_local_blocks)
    lay |= ((idx[:, None] - idx[None, :]) % cfg.stride) == 0


def _bigbird(cfg, h, lay):
    nb = lay.shape[0]
    _band(lay, cfg.num_local_blocks)
    lay[:, :cfg.num_global_blocks] = True
    seed = cfg.seed + (h if cfg.different_layout_per_head else 0)
    gen = torch.Generator().manual_seed(seed)
    for i in range(nb):
        candidates = (~lay[i, :i]).nonzero().flatten()  # earlier blocks not yet attended
        if candidates.numel() == 0 or cfg.num_random_blocks == 0:
            continue
        pick = torch.randperm(candidates.numel(), generator=gen)[:cfg.num_random_blocks]
        lay[i, candidates[pick]] = True


def check_layout(layout: torch.Tensor, n_heads: int, seq_len: int, block: int) -> None:
    """Raise a ValueError naming the problem unless `layout` is a valid causal layout for these sizes."""
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool:
        raise ValueError(f"layout must be a torch.bool tensor [heads, nb, nb], got "
                         f"{getattr(layout, 'dtype', type(layout).__name__)}; build it with make_layout()")
    if seq_len % block != 0:
        raise ValueError(f"seq_len={seq_len} is not a multiple of the sparse block size {block}; pad the sequence "
                         f"to a multiple of {block} or use another block size")
    nb = seq_len // block
    if tuple(layout.shape) != (n_heads, nb, nb):
        raise ValueError(f"layout shape {tuple(layout.shape)} does not match (heads={n_heads}, seq/block={nb}, {nb}) "
                         f"for seq_len={seq_len}, block={block}; build it with make_layout(cfg, {n_heads}, {seq_len})")
    lay = layout.cpu()
    if lay.triu(1).any():
        raise ValueError("layout has blocks above the diagonal (future keys); causal layouts must be "
                         "lower-block-triangular: use layout.tril()")
    if not lay.diagonal(dim1=1, dim2=2).all():
        raise ValueError("layout misses diagonal blocks; every query block must attend to its own block "
                         "(set layout[:, i, i] = True)")


def layout_density(layout: torch.Tensor, block: int | None = None) -> float:
    """Fraction of the causal (query, key) element pairs kept by `layout`.

    With `block`, exact: a kept off-diagonal block holds block^2 pairs, a diagonal block block*(block+1)/2, out of
    s*(s+1)/2 causal pairs per head. Without it, the large-block limit (a diagonal block counts half a block).
    """
    if layout.dim() != 3 or layout.shape[1] != layout.shape[2]:
        raise ValueError(f"layout must be [heads, nb, nb], got shape {tuple(layout.shape)}")
    lay = layout.bool().tril()
    heads, nb = lay.shape[0], lay.shape[1]
    diag = int(lay.diagonal(dim1=1, dim2=2).sum())
    off = int(lay.sum()) - diag
    if block is None:
        return (off + 0.5 * diag) / (heads * nb * nb / 2)
    s = nb * block
    kept = off * block * block + diag * block * (block + 1) / 2
    return kept / (heads * s * (s + 1) / 2)


def expand_layout_to_mask(layout: torch.Tensor, block: int, seq_len: int) -> torch.Tensor:
    """Element mask [heads, seq_len, seq_len] (True = attend): the kept blocks, causal inside the diagonal blocks."""
    if seq_len % block != 0 or layout.shape[-1] * block != seq_len:
        raise ValueError(f"layout with {layout.shape[-1]} blocks of {block} does not cover seq_len={seq_len}; "
                         f"seq_len must equal nb * block")
    mask = layout.bool().repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=layout.device).tril()
    return mask & causal
