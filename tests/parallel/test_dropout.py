"""Dropout > 0: recomputation replays the same masks, and tensor parallelism draws equal masks on replicated tensors and
different ones on sharded tensors.

- Recompute none / selective / full give bit-identical losses, gradient norms and gradients, in one process and under
  TP2: a recomputed forward that drew fresh masks would change the gradients and so every later loss.
- Under TP2 every dropout call is observed on both ranks (torch.nn.functional.dropout wrapped, the real one still
  runs): the residual stream (embedding, attention output, MLP output) is replicated, so its masks must be equal on the
  two ranks; the attention probabilities are split by head, so theirs must differ. With sequence parallelism the
  residual stream is split by sequence, so its masks must differ too.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt3d.train.runtime import init_runtime
from gpt3d.train.trainer import Trainer

from .harness import SP, job, layout_overrides, make_config, register, register_job, results, synthetic_batches

DROPOUT = ["model.hidden_dropout=0.1", "model.attn_dropout=0.1", "model.dense_attention=softmax"]
MODES = ("none", "selective", "full")
STEPS = 3
LAYOUTS = {1: layout_overrides(1, 1, 1), 2: layout_overrides(2, 1, 1)}

RECOMPUTE_JOBS = {(world, mode): register_job(world, f"dropout world={world} recompute={mode}",
                                               job(LAYOUTS[world] + DROPOUT + [f"parallel.recompute={mode}"], STEPS))
                  for world in LAYOUTS for mode in MODES}
NO_DROPOUT_JOB = register_job(1, "no dropout world=1", job(LAYOUTS[1] + ["model.dense_attention=softmax"], STEPS))


def observed_dropout_masks(rank: int, world_size: int, overrides: list[str]) -> list[tuple[int, torch.Tensor, int]]:
    """(rank of the tensor, the elements dropped, its non-zero elements) of every dropout call of one training step,
    in call order."""
    cfg = make_config(overrides)
    rt = init_runtime(cfg, rank, world_size, rank, world_size)
    trainer = Trainer(cfg, rt)
    masks, real_dropout = [], F.dropout

    def observing_dropout(x, p=0.5, training=True, inplace=False):
        out = real_dropout(x, p, training, inplace)
        if training and p > 0:
            masks.append((x.dim(), ((out == 0) & (x != 0)).detach().clone(), int((x != 0).sum())))
        return out

    F.dropout = observing_dropout
    try:
        trainer.train_step(synthetic_batches(1, cfg.train.global_batch_size, cfg.train.seq_len,
                                             cfg.model.vocab_size)[0])
    finally:
        F.dropout = real_dropout
    return masks


MASK_TASKS = {sp: register(2, f"dropout masks tp2 sp={sp}", observed_dropout_masks,
                           LAYOUTS[2] + DROPOUT + ([SP] if sp else []))
              for sp in (False, True)}


@pytest.mark.parametrize("world", sorted(LAYOUTS))
def test_recompute_replays_dropout_masks_bit_identically(world):
    runs = {mode: results(world, RECOMPUTE_JOBS[world, mode])[0] for mode in MODES}
    reference = runs["none"]
    no_dropout = results(1, NO_DROPOUT_JOB)[0]
    assert reference["losses"] != no_dropout["losses"], "dropout had no effect; the test would prove nothing"
    for mode in ("selective", "full"):
        run = runs[mode]
        assert run["losses"] == reference["losses"], mode
        assert run["norms"] == reference["norms"], mode
        assert run["grads"].keys() == reference["grads"].keys()
        for name, grad in run["grads"].items():
            assert torch.equal(grad, reference["grads"][name]), f"{mode}: gradient of {name}"


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_tp_masks_equal_on_replicated_and_different_on_sharded_tensors(sequence_parallel):
    rank0, rank1 = results(2, MASK_TASKS[sequence_parallel])
    assert len(rank0) == len(rank1) > 0
    residual = attention = 0
    for (dim0, m0, nonzero), (dim1, m1, _) in zip(rank0, rank1):
        assert dim0 == dim1 and m0.shape == m1.shape
        assert 0.05 < m0.sum().item() / nonzero < 0.15  # p = 0.1 of the inputs (causally masked scores are 0 already)
        if dim0 == 4:  # attention probabilities [micro-batch, heads of this rank, s, s]: split by head
            attention += 1
            assert not torch.equal(m0, m1), "attention-probability masks must differ between TP ranks"
        elif sequence_parallel:  # residual stream split by sequence
            residual += 1
            assert not torch.equal(m0, m1), "sequence-parallel residual-stream masks must differ between TP ranks"
        else:  # residual stream replicated on the TP ranks
            residual += 1
            assert torch.equal(m0, m1), "replicated residual-stream masks must be equal on the TP ranks"
    n_micro, n_layers = 4, 4  # global batch 8 in micro-batches of 2; 4 layers
    assert attention == n_micro * n_layers
    assert residual == n_micro * (1 + 2 * n_layers)  # embedding, then attention and MLP outputs of every layer
