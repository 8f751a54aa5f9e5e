"""Megatron checkpoint directories: the tracker file, iteration folders, and reading its pickled .pt files safely.

Megatron pickles its training `args` (an argparse.Namespace) into every .pt file. Without trust a file is read with
torch.load(weights_only=True), allowing only argparse.Namespace beyond tensors and primitives; anything else needs
`trusted=True` (CLI: `gpt3d convert --trusted`), which runs the file's pickle code."""
from __future__ import annotations

import argparse
import os
import re
from typing import Any

import torch

from .errors import InteropError

TRACKER = "latest_checkpointed_iteration.txt"
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def find_iteration_dir(directory: str) -> str:
    """The iteration folder a Megatron save directory's tracker points at (or `directory` itself when it already is
    an iteration folder)."""
    tracker = os.path.join(directory, TRACKER)
    if os.path.isfile(tracker):
        with open(tracker) as fh:
            text = fh.read().strip()
        name = "release" if text == "release" else None
        if name is None:
            try:
                name = iteration_dir_name(int(text))
            except ValueError:
                raise InteropError(f"{tracker}: holds {text!r}, not an iteration number or 'release'") from None
        path = os.path.join(directory, name)
        if not os.path.isdir(path):
            raise InteropError(f"{tracker}: points at {name}, which is missing from {directory}")
        return path
    base = os.path.basename(os.path.normpath(directory))
    if re.match(r"^iter_\d{7}$", base) or base == "release":
        return directory
    raise InteropError(f"{directory}: no {TRACKER}; point at a Megatron save directory (--save) or one of its "
                       f"iter_NNNNNNN folders")


def rank_dirs(iteration_dir: str) -> dict[tuple[int, int], str]:
    """{(tp_rank, pp_rank): mp_rank_TT[_PPP] folder} of a legacy checkpoint."""
    found = {}
    for name in os.listdir(iteration_dir):
        m = _RANK_DIR.match(name)
        if m and os.path.isdir(os.path.join(iteration_dir, name)):
            found[(int(m.group(1)), int(m.group(2) or 0))] = os.path.join(iteration_dir, name)
    return found


def read_pt(path: str, trusted: bool) -> dict[str, Any]:
    """torch.load a Megatron .pt file: weights_only (plus argparse.Namespace) unless trusted."""
    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError naming the unsafe global
        reason = str(exc).strip().splitlines()[0][:300]
        raise InteropError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({reason}). Megatron pickles its training "
            f"`args` into checkpoints, and reading them runs code from the file: if you trust this checkpoint, pass "
            f"--trusted (Python: trusted=True).") from exc


def claim_directory(directory: str, overwrite: bool) -> None:
    """Refuse to mix a new export into an existing Megatron save directory (the tracker would lie about it)."""
    if os.path.exists(os.path.join(directory, TRACKER)) and not overwrite:
        raise InteropError(f"{directory}: already holds a Megatron checkpoint ({TRACKER}); choose an empty directory "
                           f"or pass overwrite=True")
    os.makedirs(directory, exist_ok=True)


def write_tracker(directory: str, iteration: int) -> None:
    """Written last, so a failed export never points Megatron at a half-written iteration."""
    tmp = os.path.join(directory, TRACKER + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(str(iteration))
    os.replace(tmp, os.path.join(directory, TRACKER))
