"""Start fine-tuning from a checkpoint's weights (any layout): heads the checkpoint lacks keep their fresh init.

`check_init_checkpoint` runs before any rank starts and names every mismatch; `load_weights` is what each rank does.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from gpt3d.checkpoint.errors import CheckpointError
from gpt3d.checkpoint.plan import model_shapes
from gpt3d.config.model import ModelConfig
from gpt3d.model.init import param_full_name

HEADS = "task_heads."


def open_checkpoint(path: str):
    from gpt3d.checkpoint.format import Checkpoint
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    return Checkpoint(resolve_checkpoint_path(path))


def check_init_checkpoint(path: str, model: ModelConfig, what: str = "--from") -> list[str]:
    """Raise one CheckpointError for a vocabulary or shape mismatch; returns the heads that will start fresh."""
    ckpt = open_checkpoint(path)
    problems, fresh = [], []
    vocab = ckpt.config.get("model", {}).get("vocab_size")
    if vocab != model.vocab_size:
        problems.append(f"vocabulary: checkpoint vocab_size={vocab}, run model.vocab_size={model.vocab_size}")
    for name, shape in model_shapes(model).items():
        key = "model/" + name
        if not ckpt.has(key) and name.startswith(HEADS):
            fresh.append(name)
        elif not ckpt.has(key):
            problems.append(f"missing {name}")
        elif tuple(ckpt.shape(key)) != tuple(shape):
            problems.append(f"{name} {list(ckpt.shape(key))} vs model {list(shape)}")
    ckpt.close()
    if problems:
        raise CheckpointError(f"{what} {path}: does not fit the run's model: {'; '.join(problems[:4])}"
                              f"{'...' if len(problems) > 4 else ''}. Use the model config the checkpoint was "
                              f"trained with (its metadata.json 'config')")
    return fresh


@torch.no_grad()
def load_weights(chunks: Iterable[nn.Module], path: str) -> list[str]:
    """Copy this rank's regions of every parameter the checkpoint has; returns the names it lacked (heads)."""
    from gpt3d.checkpoint.trainer_state import region_of
    ckpt = open_checkpoint(path)
    params = [(param_full_name(p, n), p) for chunk in chunks for n, p in chunk.named_parameters()]
    present = [(name, p) for name, p in params if ckpt.has("model/" + name)]
    files = set()
    for name, p in present:
        _, start, size = region_of(p)
        files |= ckpt.files_for("model/" + name, start, size)
    ckpt.verify(sorted(files))
    for name, p in present:
        _, start, size = region_of(p)
        p.copy_(torch.from_numpy(ckpt.read_region("model/" + name, start, size)).to(p.dtype))
    ckpt.close()
    return [name for name, _ in params if not ckpt.has("model/" + name)]
