"""Reassemble full (unsharded) tensors from every rank: for parity tests, exports and debugging at small scale."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gpt3d.model.init import param_full_name

from .context import ParallelContext


def local_shards(chunks: list[nn.Module], what: str = "param") -> list[tuple[str, torch.Tensor, object]]:
    """(full name, local tensor on CPU, shard info) for every parameter this rank holds (tied copies skipped)."""
    out = []
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            if getattr(p, "tied_copy", False):
                continue
            tensor = p.detach() if what == "param" else getattr(p, "main_grad", p.grad)  # fp32 main grads
            if tensor is None:
                continue
            out.append((param_full_name(p, name), tensor.detach().float().cpu().clone(), getattr(p, "shard", None)))
    return out


def gather_full(ctx: ParallelContext, chunks: list[nn.Module], what: str = "param") -> dict[str, torch.Tensor]:
    """Every parameter (or gradient) at full shape, on every rank. Only DP rank 0's copies are used."""
    mine = local_shards(chunks, what) if ctx.dp_rank == 0 else []
    if ctx.world_group.size > 1:
        everyone = [None] * ctx.world_group.size
        dist.all_gather_object(everyone, mine, group=ctx.world_group.pg)
    else:
        everyone = [mine]
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    dims: dict[str, int | None] = {}
    for rank_items in everyone:
        for name, tensor, shard in rank_items:
            index = shard.rank if shard is not None else 0
            pieces.setdefault(name, {})[index] = tensor
            dims[name] = shard.dim if shard is not None else None
    full = {}
    for name, parts in pieces.items():
        dim = dims[name]
        full[name] = parts[0] if dim is None else torch.cat([parts[i] for i in sorted(parts)], dim=dim)
    return full
