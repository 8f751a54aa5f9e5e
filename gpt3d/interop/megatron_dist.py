"""Megatron's `torch_dist` dist_checkpointing format, read and written with torch.distributed.checkpoint (DCP).

An iteration folder holds metadata.json (backend names), common.pt (the non-tensor entries: args, iteration, ...),
.metadata (DCP's index) and __R_K.distcp (tensor bytes). Tensors are stored at their global shape, independent of the
parallel layout (only the vocabulary padding depends on tp); the layers are stacked on a leading axis under
`decoder.layers.*` and the norms use the Transformer-Engine names. Each layer linear's empty `_extra_state` is a
pickled object keyed `<key>/shard_<layer>_<layers>` (the pickled list [None]); megatron's loader asks for them, so they are written too.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Mapping, Optional

import torch

from gpt3d.config.model import ModelConfig

from .errors import InteropError
from .megatron_args import args_from_model_config
from .megatron_files import read_pt
from .megatron_names import CORE_LINEARS, DIST_LAYER, GPT3D_TO_CORE_GLOBAL

METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
            "common_backend_version": 1}
_LAYER_PREFIX = "decoder.layers."


def dist_state(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict:
    """The DCP entries megatron-core's GPTModel.sharded_state_dict() saves for this model."""
    state: dict = {}
    for gname in ("embed.tok.weight", "embed.pos.weight"):
        state[GPT3D_TO_CORE_GLOBAL[gname]] = sd[gname].contiguous()
    layers = cfg.n_layers
    for sub, core in DIST_LAYER.items():  # norms under their Transformer-Engine names, as megatron saves them
        state[_LAYER_PREFIX + core] = torch.stack([sd[f"blocks.{i}.{sub}"] for i in range(layers)])
    for linear in CORE_LINEARS:
        for i in range(layers):  # DCP pickles the value: megatron stores the list of its ShardedObjects' data
            state[f"{_LAYER_PREFIX}{linear}._extra_state/shard_{i}_{layers}"] = [None]
    for gname in ("final_ln.weight", "final_ln.bias"):
        state[GPT3D_TO_CORE_GLOBAL[gname]] = sd[gname].contiguous()
    if not cfg.tie_embeddings:
        state["output_layer.weight"] = sd["head.weight"].contiguous()
    return state


def write_dist(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, iteration_dir: str, tp: int, pp: int,
               iteration: int) -> None:
    import torch.distributed.checkpoint as dcp
    os.makedirs(iteration_dir, exist_ok=True)
    # One process writes the global tensors: DCP then reshards them to whatever layout megatron loads with.
    with warnings.catch_warnings():  # DCP warns that it runs without a process group, which is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(dist_state(sd, cfg), storage_writer=dcp.FileSystemWriter(iteration_dir), no_dist=True)
    torch.save({"args": args_from_model_config(cfg, tp, pp, iteration), "checkpoint_version": 3.0,
                "iteration": iteration}, os.path.join(iteration_dir, "common.pt"))
    with open(os.path.join(iteration_dir, "metadata.json"), "w") as fh:
        json.dump(METADATA, fh)


def is_dist(iteration_dir: str) -> bool:
    path = os.path.join(iteration_dir, "metadata.json")
    if not os.path.isfile(path):
        return False
    with open(path) as fh:
        backend = json.load(fh).get("sharded_backend")
    if backend != "torch_dist":
        raise InteropError(f"{path}: sharded_backend is {backend!r}; only 'torch_dist' checkpoints are read "
                           f"(convert zarr ones with Megatron's checkpoint converter first)")
    return True


def read_common(iteration_dir: str, trusted: bool) -> Optional[dict]:
    path = os.path.join(iteration_dir, "common.pt")
    return read_pt(path, trusted) if os.path.isfile(path) else None


def read_dist(iteration_dir: str, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a torch_dist checkpoint under gpt3d names (Megatron's vocab padding kept). The `.metadata`
    index is unpickled with an allow-list of DCP's metadata classes unless `trusted`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from .dcp_metadata import safe_filesystem_reader
    reader = safe_filesystem_reader(iteration_dir, trusted)
    metadata = reader.read_metadata()
    state = {key: torch.empty(md.size, dtype=md.properties.dtype)
             for key, md in metadata.state_dict_metadata.items() if isinstance(md, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=reader, no_dist=True)
    return _to_gpt3d(state, iteration_dir)


_DIST_TO_GPT3D_LAYER = {core: sub for sub, core in DIST_LAYER.items()}
_DIST_TO_GPT3D_GLOBAL = {core: g for g, core in GPT3D_TO_CORE_GLOBAL.items()}


def _to_gpt3d(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if key in _DIST_TO_GPT3D_GLOBAL:
            out[_DIST_TO_GPT3D_GLOBAL[key]] = tensor
        elif key.startswith(_LAYER_PREFIX) and key[len(_LAYER_PREFIX):] in _DIST_TO_GPT3D_LAYER:
            sub = _DIST_TO_GPT3D_LAYER[key[len(_LAYER_PREFIX):]]
            for i, layer in enumerate(tensor.unbind(0)):
                out[f"blocks.{i}.{sub}"] = layer.clone()
        elif not key.startswith(("optimizer.", "rng_state", "rerun_state_machine")):
            unknown.append(key)
    if unknown:
        raise InteropError(f"{source}: unknown torch_dist tensors {sorted(unknown)}; only megatron-core GPT models "
                           f"with learned positions, LayerNorm and biased linears convert")
    return out
