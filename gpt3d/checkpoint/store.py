"""Checkpoint directories of a run: atomic commit, the `latest` pointer, keeping the last K, finding a resume point.

    RUN/checkpoints/
      step_00000010/         complete checkpoints (renamed into place only once every file and metadata.json is
      step_00000020/         written and fsynced)
      latest                 "step_00000020": rewritten atomically (tmp + rename) after the rename above
      .tmp-step_00000030/    a save in progress (or one a crash interrupted: ignored, removed by the next save)
      .replaced-step_00000020/  while step 20 is saved again: the old copy, moved aside until the new one is in place
      .deleting-step_00000010/  a checkpoint being dropped (keep_last): renamed first, so a half-deleted directory
                                never looks complete

Every change is a rename, so a crash at any point leaves the checkpoint `latest` names readable: a `.replaced-` copy
whose `step_` directory is missing is that checkpoint (read in place; the next save renames it back).
"""
from __future__ import annotations

import json
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
REPLACED, DELETING = ".replaced-", ".deleting-"
KILL_POINT = "GPT3D_TEST_KILL_IN_COMMIT"  # tests only: os._exit(9) right after the named step of commit()


def _crash_point(name: str) -> None:
    if os.environ.get(KILL_POINT) == name:
        os._exit(9)


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def tmp_dir_for(root: Path, step: int) -> Path:
    return root / f".tmp-{step_dir_name(step)}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under `root`, oldest first (by directory name; a `.replaced-`
    copy stands in for its step while the `step_` directory is missing)."""
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / METADATA).is_file():
            found[int(m.group(1))] = child
    for child in root.glob(REPLACED + "step_*"):
        m = _STEP_DIR.match(child.name[len(REPLACED):])
        if m and int(m.group(1)) not in found and (child / METADATA).is_file():
            found[int(m.group(1))] = child
    return sorted(found.items())


def recorded_step(path: Path) -> int:
    """The step a checkpoint's metadata.json records; refuses a directory whose name says another step (renamed or
    copied by hand: resuming it would continue the data and LR schedule from the wrong place)."""
    meta_path = path / METADATA
    try:
        step = json.loads(meta_path.read_text()).get("step")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable ({exc}); the checkpoint is corrupted; resume from another "
                              f"checkpoint (--resume PATH)") from None
    m = _STEP_DIR.match(path.name[len(REPLACED):] if path.name.startswith(REPLACED) else path.name)
    if not isinstance(step, int) or (m and int(m.group(1)) != step):
        raise CheckpointError(f"{path}: the directory name says step {int(m.group(1)) if m else '?'} but "
                              f"{METADATA} records step {step!r}; a checkpoint directory was renamed or copied by "
                              f"hand: rename it back to {step_dir_name(step) if isinstance(step, int) else 'step_N'} "
                              f"or pass --resume PATH explicitly")
    return step


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The checkpoint `latest` names if it is complete, else the newest complete one (a crash between the rename
    and the pointer update leaves the pointer one behind: the newer directory is complete and wins). The step its
    metadata records must match its name."""
    found = complete_checkpoints(root)
    if not found:
        return None
    for _, path in found:
        recorded_step(path)
    chosen = found[-1][1]
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / METADATA).is_file() and target == chosen:
            chosen = target
    return chosen


def commit(tmp: Path, root: Path, step: int, keep_last: int) -> Path:
    """Rename a fully written tmp directory into place, move `latest`, and drop checkpoints beyond `keep_last`.
    Saving a step again moves the old copy aside first and deletes it only once the new one is in place."""
    final = root / step_dir_name(step)
    aside = root / (REPLACED + final.name)
    fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. a rerun with --overwrite)
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
        fsync_dir(root)
        _crash_point("aside")
    os.rename(tmp, final)
    fsync_dir(root)
    _crash_point("swap")
    pointer_tmp = root / (LATEST + ".tmp")
    with open(pointer_tmp, "w") as f:
        f.write(final.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, root / LATEST)
    fsync_dir(root)
    _crash_point("pointer")
    delete_checkpoint(aside)
    _crash_point("delete")
    for _, old in complete_checkpoints(root)[:-keep_last]:
        delete_checkpoint(old)
    return final


def delete_checkpoint(path: Path) -> None:
    """Remove a checkpoint directory: renamed to `.deleting-` first, so a crash half way never leaves a directory
    that still looks complete."""
    if not path.exists():
        return
    name = path.name[len(REPLACED):] if path.name.startswith(REPLACED) else path.name
    doomed = path.parent / (DELETING + name)
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_partial_saves(root: Path) -> None:
    """Remove interrupted saves and deletions (never complete, never pointed to)."""
    if root.is_dir():
        for stale in (*root.glob(".tmp-step_*"), *root.glob(DELETING + "*")):
            shutil.rmtree(stale, ignore_errors=True)


def prepare_tmp(root: Path, step: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    remove_partial_saves(root)
    for aside in root.glob(REPLACED + "step_*"):  # a crash while a step was saved again
        final = root / aside.name[len(REPLACED):]
        if final.exists():
            delete_checkpoint(aside)
        else:
            os.rename(aside, final)  # the swap never happened: the old copy is that step's checkpoint
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
