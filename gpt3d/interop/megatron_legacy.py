"""Megatron's legacy per-rank format (`--ckpt-format torch`): iter_%07d/mp_rank_TT[_PPP]/model_optim_rng.pt.

Each file holds one (tensor, pipeline) rank's slice of the model under megatron-core names, layers numbered within
their pipeline stage. Shards are contiguous chunks as Megatron cuts them (see megatron_names.split_dim); the
vocabulary rows carry Megatron's padding (a multiple of 128 * tp).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import torch

from gpt3d.config.model import ModelConfig

from .errors import InteropError
from .megatron_args import args_from_model_config
from .megatron_files import iteration_dir_name, rank_dirs, read_pt
from .megatron_names import CORE_LAYER, flatten, parse_name, split_dim
from .qkv import head_dim_last_to_interleaved, separate_to_interleaved

CHECKPOINT_VERSION = 3.0
FILE_NAME = "model_optim_rng.pt"


# megatron-core's state_dict order within a layer: gpt3d sub-names, and each linear's `_extra_state` after it.
_MEGATRON_LAYER_ORDER = (
    "ln1.weight", "ln1.bias", "attn.proj.weight", "attn.proj.bias", "self_attention.linear_proj._extra_state",
    "attn.qkv.weight", "attn.qkv.bias", "self_attention.linear_qkv._extra_state", "ln2.weight", "ln2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.linear_fc1._extra_state", "mlp.fc2.weight", "mlp.fc2.bias",
    "mlp.linear_fc2._extra_state")


def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    return f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp > 1 else "")


def _shard(tensor: torch.Tensor, dim: Optional[int], rank: int, tp: int) -> torch.Tensor:
    return tensor.clone() if dim is None else tensor.chunk(tp, dim=dim)[rank].clone()


def stage_model_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, tp_rank: int, tp: int, pp_rank: int,
                     pp: int, layers: Optional[list[int]] = None) -> dict:
    """One rank's `model` entry, ordered and named as megatron-core's GPTModel.state_dict_for_save_checkpoint().
    `layers`: this stage's global layer ids when the split is uneven (megatron's num_layers_in_first_pipeline_stage);
    by default the stage's equal share."""
    if layers is None:
        per_stage = cfg.n_layers // pp
        layers = list(range(pp_rank * per_stage, (pp_rank + 1) * per_stage))
    out: dict = {}

    def put(gpt3d_name: str, core_name: str) -> None:
        out[core_name] = _shard(sd[gpt3d_name], split_dim(gpt3d_name), tp_rank, tp)

    first, last = pp_rank == 0, pp_rank == pp - 1
    if first:
        put("embed.tok.weight", "embedding.word_embeddings.weight")
        put("embed.pos.weight", "embedding.position_embeddings.weight")
    for local, i in enumerate(layers):
        for sub in _MEGATRON_LAYER_ORDER:
            if sub.endswith("._extra_state"):
                out[f"decoder.layers.{local}.{sub}"] = None
            else:
                put(f"blocks.{i}.{sub}", f"decoder.layers.{local}.{CORE_LAYER[sub]}")
    if last:
        put("final_ln.weight", "decoder.final_layernorm.weight")
        put("final_ln.bias", "decoder.final_layernorm.bias")
        if not cfg.tie_embeddings:
            put("head.weight", "output_layer.weight")
        elif not first:  # the last stage's copy of a tied embedding (Megatron keeps it equal by all-reduce)
            put("embed.tok.weight", "output_layer.weight")
        out["output_layer._extra_state"] = None
    return out


def write_legacy(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, directory: str, tp: int, pp: int,
                 iteration: int) -> None:
    """Every rank's file of iteration `iteration` (sd's vocabulary rows already padded Megatron's way)."""
    args = args_from_model_config(cfg, tp, pp, iteration)
    root = os.path.join(directory, iteration_dir_name(iteration))
    for pp_rank in range(pp):
        for tp_rank in range(tp):
            folder = os.path.join(root, rank_dir_name(tp_rank, pp_rank, pp))
            os.makedirs(folder, exist_ok=True)
            torch.save({"args": args, "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration,
                        "model": stage_model_dict(sd, cfg, tp_rank, tp, pp_rank, pp)},
                       os.path.join(folder, FILE_NAME))


def _fix_qkv_order(name: str, tensor: torch.Tensor, version: float, n_heads: Optional[int], tp: int, path: str):
    """Old checkpoint versions stored each rank's qkv rows in another order; bring them to [heads, 3, d_head]."""
    if version >= 2.0 or not name.startswith("attn.qkv"):
        return tensor
    if n_heads is None:
        raise InteropError(f"{path}: checkpoint_version {version} stores qkv in an old order that needs the head "
                           f"count; pass cfg= or trusted=True so the args can be read")
    local = n_heads // tp
    d_head = tensor.shape[0] // (3 * local)
    fix = separate_to_interleaved if version == 0 else head_dim_last_to_interleaved
    return fix(tensor, local, d_head)


def read_legacy(iteration_dir: str, trusted: bool, n_heads: Optional[int]):
    """(args or None, full state dict under gpt3d names with Megatron's vocab padding) of a legacy checkpoint, merging
    every tensor and pipeline rank. A tied model's last-stage copy of the embedding comes back as head.weight (the
    caller drops it when the config ties). `n_heads` is only needed for checkpoint_version < 2."""
    ranks = rank_dirs(iteration_dir)
    if not ranks:
        raise InteropError(f"{iteration_dir}: neither mp_rank_TT[_PPP] folders (legacy format) nor metadata.json "
                           f"(torch_dist); point at a Megatron checkpoint directory")
    tp = 1 + max(t for t, _ in ranks)
    pp = 1 + max(p for _, p in ranks)
    source = "found"
    loaded: dict[str, dict] = {}  # rank 0's file, read once for its args and reused below
    first = os.path.join(ranks[(0, 0)], FILE_NAME) if (0, 0) in ranks else ""
    if os.path.isfile(first):
        loaded[first] = read_pt(first, trusted)
        first_args = loaded[first].get("args")
        if first_args is not None and getattr(first_args, "tensor_model_parallel_size", None):
            tp = first_args.tensor_model_parallel_size
            pp = getattr(first_args, "pipeline_model_parallel_size", None) or 1
            source = "checkpoint args say"
    absent = [rank_dir_name(t, p, pp) for p in range(pp) for t in range(tp) if (t, p) not in ranks]
    if absent:
        raise InteropError(f"{iteration_dir}: rank folders {absent} are missing ({source} tp={tp}, pp={pp}); copy "
                           f"the complete checkpoint")
    args, version = None, None
    merged: dict[str, torch.Tensor] = {}
    layer_offset = 0
    for pp_rank in range(pp):
        shards: dict[str, list[torch.Tensor]] = {}
        stage_layers: set[int] = set()
        for tp_rank in range(tp):
            path = os.path.join(ranks[(tp_rank, pp_rank)], FILE_NAME)
            if not os.path.isfile(path):
                raise InteropError(f"{path}: missing; copy the complete checkpoint")
            ckpt = loaded.pop(path) if path in loaded else read_pt(path, trusted)
            if "model" not in ckpt:
                hint = " (a virtual-pipeline checkpoint: model0, model1, ... is not supported)" if "model0" in ckpt else ""
                raise InteropError(f"{path}: has no 'model' entry{hint}; keys are {sorted(ckpt)}")
            args = ckpt.get("args", args)
            version = float(ckpt.get("checkpoint_version", 0))
            heads = n_heads if n_heads is not None else getattr(args, "num_attention_heads", None)
            for name, tensor in flatten(ckpt["model"]).items():
                try:
                    parsed = parse_name(name)
                except KeyError:
                    raise InteropError(f"{path}: unknown Megatron parameter {name!r}; only GPT models with "
                                       f"learned positions and LayerNorm convert") from None
                if parsed is None or tensor is None:
                    continue
                local, gname = parsed
                if local is not None:
                    stage_layers.add(local)
                    gname = f"blocks.{layer_offset + local}.{gname}"
                if gname == "head.weight" and pp_rank != pp - 1:
                    raise InteropError(f"{path}: holds an output layer on a non-last pipeline stage")
                tensor = _fix_qkv_order(gname.split(".", 2)[-1], tensor, version, heads, tp, path)
                shards.setdefault(gname, []).append(tensor)
        for gname, parts in shards.items():
            if len(parts) != tp:
                raise InteropError(f"{iteration_dir}: {gname} is present on {len(parts)} of {tp} tensor ranks of "
                                   f"pipeline stage {pp_rank}; the checkpoint is inconsistent")
            dim = split_dim(gname)
            merged[gname] = parts[0] if dim is None else torch.cat(parts, dim=dim)
        layer_offset += len(stage_layers)
    return args, merged
