"""Checkpointing config: when to save into RUN/checkpoints, how many to keep, and what to resume from.

The format and the commands that read it (`gpt3d convert`, `gpt3d inspect`) are in gpt3d/checkpoint/."""
from __future__ import annotations

from dataclasses import dataclass

from .base import field, require


@dataclass
class CheckpointConfig:
    save_interval: int = field(0, doc="save every N steps (0: only at the end and on a pre-timeout signal)")
    keep_last: int = field(3, doc="how many complete checkpoints to keep")
    async_save: bool = field(False, doc="write files in a background thread after copying tensors to host memory")
    resume: str = field("auto", doc="auto = newest complete checkpoint in the run directory; none; or a path")
    save_on_exit: bool = field(True, doc="save when training ends or a pre-timeout/termination signal arrives")
    reset_optimizer: bool = field(False, doc="resume from a checkpoint without Adam moments (fresh moments, step "
                                             "count 0); without it such a checkpoint is refused")

    def __post_init__(self):
        require(self.save_interval >= 0, "checkpoint.save_interval", "must be >= 0")
        require(self.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")
        require(isinstance(self.resume, str) and self.resume.strip() != "", "checkpoint.resume",
                "must be auto, none, or the path of a checkpoint (RUN/checkpoints/step_N) or run directory")
