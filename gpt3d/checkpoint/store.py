"""Checkpoint directories of a run: atomic commit, the `latest` pointer, keeping the last K, finding a resume point.

    RUN/checkpoints/
      step_00000010/         complete checkpoints (renamed into place only once every file and metadata.json is
      step_00000020/         written and fsynced)
      latest                 "step_00000020": rewritten atomically (tmp + rename) after the rename above
      .tmp-step_00000030/    a save in progress (or one a crash interrupted: ignored, removed by the next save)
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Optional

from .errors import CheckpointError
from .format import METADATA, fsync_dir

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def tmp_dir_for(root: Path, step: int) -> Path:
    return root / f".tmp-{step_dir_name(step)}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / METADATA).is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The checkpoint `latest` names if it is complete, else the newest complete one (a crash between the rename
    and the pointer update leaves the pointer one behind: the newer directory is complete and wins)."""
    found = complete_checkpoints(root)
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / METADATA).is_file() and (not found or target == found[-1][1]):
            return target
    return found[-1][1] if found else None


def commit(tmp: Path, root: Path, step: int, keep_last: int) -> Path:
    """Rename a fully written tmp directory into place, move `latest`, and drop checkpoints beyond `keep_last`."""
    final = root / step_dir_name(step)
    if final.exists():  # the same step saved again (e.g. a rerun with --overwrite): replace it
        shutil.rmtree(final)
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(root)
    pointer_tmp = root / (LATEST + ".tmp")
    with open(pointer_tmp, "w") as f:
        f.write(final.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, root / LATEST)
    fsync_dir(root)
    for _, old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def prepare_tmp(root: Path, step: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step_*"):  # interrupted saves: never complete, never pointed to
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tmp_dir_for(root, step)
    tmp.mkdir()
    return tmp


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run / checkpoints directory whose newest complete checkpoint is meant."""
    p = Path(path)
    if (p / METADATA).is_file():
        return p
    for root in (p / CHECKPOINTS, p):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint directory; pass RUN/checkpoints/step_N, a run directory "
                              f"or a checkpoints directory")
    raise CheckpointError(f"{p}: holds no complete checkpoint ({METADATA} missing); pass a directory written by "
                          f"`gpt3d train --save-interval` or `gpt3d convert`")


def resume_path(resume: str, run_dir: Path) -> Optional[Path]:
    """What checkpoint.resume selects for a run in `run_dir`: auto -> newest complete checkpoint (or None)."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir / CHECKPOINTS)
    return resolve_checkpoint_path(resume)
