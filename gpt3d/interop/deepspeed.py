"""DeepSpeed ZeRO (stage 1, 2 or 3) checkpoints of a gpt3d model -> gpt3d's full fp32 state dict, consolidated by
DeepSpeed's own `zero_to_fp32` logic (the fp32 master partitions of every data-parallel rank, in its order).

The module DeepSpeed trained is a gpt3d model, so the names are gpt3d's, possibly behind a `module.` prefix.
DeepSpeed's consolidation unpickles its files; unless `trusted=True` every file of the checkpoint is first read with
torch.load(weights_only=True) (allowing DeepSpeed's own plain-data classes), so a file carrying code is refused before
DeepSpeed opens it."""
from __future__ import annotations

import os
from typing import Optional

import torch

from gpt3d.config.model import ModelConfig

from .canonical import check_gpt3d_state_dict, gpt3d_shapes
from .errors import InteropError

_PREFIXES = ("module.", "_orig_mod.")  # DeepSpeed / DDP wrapper, torch.compile wrapper


def find_tag(directory: str, tag: Optional[str]) -> str:
    if tag is not None:
        return tag
    latest = os.path.join(directory, "latest")
    if not os.path.isfile(latest):
        raise InteropError(f"{directory}: no 'latest' file naming the checkpoint tag; pass tag= (e.g. "
                           f"'global_step3') or point at the directory given to engine.save_checkpoint")
    with open(latest) as fh:
        return fh.read().strip()


def _deepspeed_data_classes() -> list:
    """DeepSpeed's own plain-data classes its checkpoints pickle (a loss scaler, the ZeRO stage enum, fragment
    addresses): rebuilding them runs no code from the file, so the weights_only check allows them."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _check_files_are_plain_data(tag_dir: str) -> None:
    files = sorted(f for f in os.listdir(tag_dir) if f.endswith(".pt"))
    if not any(f.endswith("optim_states.pt") for f in files):
        raise InteropError(f"{tag_dir}: no *optim_states.pt files; a ZeRO checkpoint keeps its fp32 weights there "
                           f"(was it saved by a ZeRO engine, stage 1-3?)")
    for name in files:
        path = os.path.join(tag_dir, name)
        try:
            with torch.serialization.safe_globals(_deepspeed_data_classes()):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:300]
            raise InteropError(f"{path}: cannot be read with torch.load(weights_only=True) ({reason}); DeepSpeed's "
                               f"consolidation unpickles it, which runs code from the file: if you trust this "
                               f"checkpoint, pass trusted=True") from exc


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def load_deepspeed(directory: str, tag: Optional[str] = None, cfg: Optional[ModelConfig] = None,
                   trusted: bool = False) -> dict[str, torch.Tensor]:
    """gpt3d's full fp32 state dict from the DeepSpeed checkpoint in `directory` (the tag read from `latest` unless
    given). With `cfg`, every name and shape is checked against the model config."""
    tag = find_tag(directory, tag)
    tag_dir = os.path.join(directory, tag)
    if not os.path.isdir(tag_dir):
        raise InteropError(f"{directory}: the checkpoint tag {tag!r} has no folder {tag_dir}")
    if not trusted:
        _check_files_are_plain_data(tag_dir)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    try:
        raw = get_fp32_state_dict_from_zero_checkpoint(directory, tag=tag)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # DeepSpeed's own messages name the problem
        raise InteropError(f"{tag_dir}: DeepSpeed could not consolidate the ZeRO checkpoint: {exc}") from exc
    sd = {_strip(name): tensor for name, tensor in raw.items()}
    if cfg is not None:
        check_gpt3d_state_dict(sd, cfg, tag_dir)
        return {name: sd[name] for name in gpt3d_shapes(cfg)}
    if "embed.tok.weight" not in sd and not any(k.startswith("blocks.") for k in sd):
        raise InteropError(f"{tag_dir}: holds no gpt3d parameters (names like {sorted(sd)[:4]}); the DeepSpeed "
                           f"engine must have wrapped a gpt3d model (build_gpt)")
    return sd
