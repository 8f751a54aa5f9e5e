"""Checkpoints: layout-independent safetensors + JSON, exact resume, conversion between layouts and frameworks.

Imports are lazy so that `gpt3d convert` / `gpt3d inspect` between gpt3d layouts never import torch (their memory
stays bounded by the largest tensor). See docs/checkpoints.md for the format.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": ".errors",
    "Checkpoint": ".format", "RankFileWriter": ".format", "write_metadata": ".format", "rank_file_name": ".format",
    "CHECKPOINTS": ".store", "latest_checkpoint": ".store", "resume_path": ".store",
    "resolve_checkpoint_path": ".store", "complete_checkpoints": ".store",
    "CheckpointSaver": ".trainer_state", "load_into_trainer": ".trainer_state", "check_compatible": ".trainer_state",
    "TargetLayout": ".plan", "model_shapes": ".plan",
    "convert_checkpoint": ".convert",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'gpt3d.checkpoint' has no attribute {name!r}")


__all__ = list(_EXPORTS)
