"""DeepSpeed ZeRO (stage 1, 2 or 3) checkpoints of a gpt3d model -> gpt3d's full fp32 state dict, consolidated by
DeepSpeed's own `zero_to_fp32` logic (the fp32 master partitions of every data-parallel rank, in its order).

The module DeepSpeed trained is a gpt3d model, so the names are gpt3d's, possibly behind a `module.` prefix.
DeepSpeed's consolidation torch.loads its files with weights_only=False; unless `trusted=True` it runs with
TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (allowing DeepSpeed's own plain-data classes), so each file is read once, safely, and
a file carrying code is refused with a message naming --trusted."""
from __future__ import annotations

import contextlib
import os
import pickle
from typing import Optional

import torch

from gpt3d.config.model import ModelConfig

from .canonical import check_gpt3d_state_dict, gpt3d_shapes
from .enum_pickles import PICKLED_GETATTR, enum_member_getter
from .errors import InteropError

_PREFIXES = ("module.", "_orig_mod.")
_FORCE_SAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # DeepSpeed / DDP wrapper, torch.compile wrapper


def find_tag(directory: str, tag: Optional[str]) -> str:
    """The checkpoint tag: given, or read from `latest`; a plain folder name inside `directory`."""
    if tag is None:
        latest = os.path.join(directory, "latest")
        if not os.path.isfile(latest):
            raise InteropError(f"{directory}: no 'latest' file naming the checkpoint tag; pass --tag (Python: tag=), "
                               f"e.g. global_step3, or point at the directory given to engine.save_checkpoint")
        with open(latest) as fh:
            tag = fh.read().strip()
    if not tag or tag in (".", "..") or "/" in tag or "\\" in tag:
        raise InteropError(f"{directory}: checkpoint tag {tag!r} is not a plain folder name inside the checkpoint "
                           f"directory; pass --tag NAME of one of its folders")
    return tag


def _deepspeed_data_classes() -> list:
    """DeepSpeed's own plain-data classes its checkpoints pickle (a loss scaler, the ZeRO stage enum, fragment
    addresses): rebuilding them runs no code from the file, so the weights_only check allows them. Python 3.11.2
    pickles the enum's members through getattr, resolved to a getter of its members only (enum_pickles.py)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address,
            (enum_member_getter((ZeroStageEnum,)), PICKLED_GETATTR)]


@contextlib.contextmanager
def _weights_only_loads():
    """Every torch.load in this block reads with weights_only=True (TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides
    DeepSpeed's explicit weights_only=False), allowing DeepSpeed's plain-data classes: the files are read once, by
    DeepSpeed, and safely, so nothing can be swapped in between a check and the real read."""
    previous = os.environ.get(_FORCE_SAFE)
    os.environ[_FORCE_SAFE] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_data_classes()):
            yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_SAFE, None)
        else:
            os.environ[_FORCE_SAFE] = previous


def _unsafe_file(tag_dir: str, exc: BaseException) -> InteropError:
    """The refusal naming the first file that needs full unpickling (each file re-read with weights_only=True, to
    name it; nothing is unpickled unsafely)."""
    culprit, reason = tag_dir, str(exc).strip().splitlines()[0][:300]
    with torch.serialization.safe_globals(_deepspeed_data_classes()):
        for name in sorted(f for f in os.listdir(tag_dir) if f.endswith(".pt")):
            try:
                torch.load(os.path.join(tag_dir, name), map_location="cpu", weights_only=True, mmap=True)
            except Exception as file_exc:  # noqa: BLE001 - any refusal names this file
                culprit, reason = os.path.join(tag_dir, name), str(file_exc).strip().splitlines()[0][:300]
                break
    return InteropError(f"{culprit}: cannot be read with torch.load(weights_only=True) ({reason}); DeepSpeed's "
                        f"consolidation would unpickle it, which runs code from the file: if you trust this "
                        f"checkpoint, pass --trusted (Python: trusted=True)")


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
    if not any(f.endswith("optim_states.pt") for f in os.listdir(tag_dir)):
        raise InteropError(f"{tag_dir}: no *optim_states.pt files; a ZeRO checkpoint keeps its fp32 weights there "
                           f"(was it saved by a ZeRO engine, stage 1-3?)")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    try:
        with contextlib.nullcontext() if trusted else _weights_only_loads():
            raw = get_fp32_state_dict_from_zero_checkpoint(directory, tag=tag)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: the file carries code
        raise _unsafe_file(tag_dir, exc) from None
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
