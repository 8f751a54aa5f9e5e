"""Layout-independent weight init: every parameter is generated at its full shape from (seed, global name), then sliced.

The same seed therefore gives the same full model whatever the TP/PP layout, and a layout change never changes the
numbers. The tied output head on the last pipeline stage carries the embedding's name and so gets identical values.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from gpt3d.config.model import ModelConfig


@dataclass(frozen=True)
class ShardInfo:
    """How a local parameter maps into its full tensor: contiguous chunk `rank` of `world` along `dim`."""
    dim: int
    rank: int
    world: int


def param_full_name(param: nn.Parameter, local_name: str) -> str:
    return getattr(param, "full_name", local_name)


def param_full_shape(param: nn.Parameter) -> tuple[int, ...]:
    shard: Optional[ShardInfo] = getattr(param, "shard", None)
    shape = list(param.shape)
    if shard is not None:
        shape[shard.dim] *= shard.world
    return tuple(shape)


def take_shard(full: torch.Tensor, shard: Optional[ShardInfo]) -> torch.Tensor:
    if shard is None:
        return full
    return full.chunk(shard.world, dim=shard.dim)[shard.rank]


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def init_full_tensor(name: str, shape: tuple[int, ...], cfg: ModelConfig, seed: int) -> torch.Tensor:
    """The full-shape initial value of parameter `name` (GPT-2 scheme, fp32, on the CPU)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return torch.zeros(shape)
    if ".ln" in name or name.startswith("final_ln"):
        return torch.ones(shape)
    std = cfg.init_std
    if name.endswith("attn.proj.weight") or name.endswith("mlp.fc2.weight"):
        std = cfg.init_std / math.sqrt(2.0 * cfg.n_layers)  # residual projections (GPT-2)
    out = torch.empty(shape)
    out.normal_(0.0, std, generator=_generator(seed, name))
    return out


@torch.no_grad()
def materialize(module: nn.Module, cfg: ModelConfig, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """Replace every (meta or real) parameter of `module` by its slice of the deterministic full init."""
    for local_name, param in list(module.named_parameters()):
        full_name = param_full_name(param, local_name)
        full = init_full_tensor(full_name, param_full_shape(param), cfg, seed)
        value = take_shard(full, getattr(param, "shard", None)).to(device).contiguous()
        owner_name, _, attr = local_name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        new = nn.Parameter(value, requires_grad=param.requires_grad)
        new.__dict__.update({k: v for k, v in param.__dict__.items() if not k.startswith("_")})
        setattr(owner, attr, new)
    return module
