"""The divisibility rules of a parallel layout, stated once.

The trainer's layout check (gpt3d/parallel/context.py), the checkpoint resharder (gpt3d/checkpoint/plan.py), the
planner's search (gpt3d/planner/layout.py) and the Megatron exporter (gpt3d/interop/megatron.py) all ask the same
questions; each words the answer for its own context (a config key to change, a planner category, a Megatron note).
`layout_rules_broken` returns the names of the broken rules, in this order:

    n_heads          tp must divide the attention heads (each rank holds whole heads)
    padded_vocab     tp must divide the padded vocabulary (vocab-parallel embedding and head)
    d_ff             tp must divide the MLP width
    seq_len          with sequence parallelism, tp must divide the sequence
    n_layers         pp * vp stages must divide the layers (unless an explicit pipeline split is given)
    global_batch     micro_batch * dp must divide the global batch
    micro_batches    interleaving (vp > 1) needs the micro-batches per step to be a multiple of pp
"""
from __future__ import annotations

from typing import Optional

from .model import ModelConfig

RULES = ("n_heads", "padded_vocab", "d_ff", "seq_len", "n_layers", "global_batch", "micro_batches")


def layout_rules_broken(model: ModelConfig, tp: int, pp: int = 1, vp: int = 1, dp: int = 1,
                        seq_len: Optional[int] = None, sequence_parallel: bool = False,
                        pipeline_split_given: bool = False, global_batch: Optional[int] = None,
                        micro_batch: Optional[int] = None) -> list[str]:
    """Names of the rules (see RULES) that this layout breaks for `model`; empty when it divides. The batch rules are
    checked only when `global_batch` and `micro_batch` are given, the sequence rule only with `sequence_parallel`."""
    broken = []
    if model.n_heads % tp:
        broken.append("n_heads")
    if model.padded_vocab_size % tp:
        broken.append("padded_vocab")
    if model.d_ff % tp:
        broken.append("d_ff")
    if sequence_parallel and seq_len is not None and seq_len % tp:
        broken.append("seq_len")
    if not pipeline_split_given and model.n_layers % (pp * vp):
        broken.append("n_layers")
    if global_batch is not None and micro_batch is not None:
        if global_batch % (micro_batch * dp):
            broken.append("global_batch")
        elif vp > 1 and (global_batch // (micro_batch * dp)) % pp:
            broken.append("micro_batches")
    return broken
