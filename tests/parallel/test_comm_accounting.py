"""The bytes each group counts in a training step equal the analytical volumes derived from the config alone
(gpt3d/parallel/volumes.py, whose docstring derives them): per rank, per group, per operation, every step of every
layout of the parity runs (TP with and without sequence parallelism and full recomputation, PP with 1F1B, GPipe and
interleaving, DP with and without the distributed optimizer). A few of the formulas are also spelled out here with
the tiny config's numbers, so the shared module is itself checked against hand arithmetic.
"""
from __future__ import annotations

import pytest

from gpt3d.parallel.volumes import bucket_numels, chunk_params, pipeline_bubble, rank_volumes
from gpt3d.train.runtime import check_layout

from .harness import PARITY_JOBS, make_config, register_parity_jobs, results

register_parity_jobs()

MEASURED_GROUPS = ("tp", "dp", "pp", "embedding")


def measured(step: dict) -> dict[str, dict[str, int]]:
    return {g: ops for g, ops in step["bytes"].items() if g in MEASURED_GROUPS and ops}


@pytest.mark.parametrize("name", list(PARITY_JOBS))
def test_bytes_per_group_equal_analytical(name):
    world, overrides, _ = PARITY_JOBS[name]
    cfg = make_config(overrides)
    layout, num_micro = check_layout(cfg, world)
    for rank in results(world, name):
        expected = rank_volumes(cfg, layout, num_micro, rank["coords"]["pp"])
        for step in rank["steps"]:
            assert measured(step) == expected, f"rank {rank['rank']} {rank['coords']}"
        # The grad-norm all-reduce over the world: one fp64 scalar per step.
        assert rank["steps"][0]["bytes"]["world"] == ({"all_reduce": 8} if world > 1 else {})


def test_formulas_by_hand_for_2x2x2():
    """tp=2 pp=2 dp=2, b=2 s=32 d=64, m = 8 / (2 * 2) = 2 micro-batches, 2 layers per stage, padded vocab 256."""
    cfg = make_config(PARITY_JOBS["2x2x2"][1])
    layout, m = check_layout(cfg, 8)
    assert m == 2
    act = 2 * 32 * 64 * 4  # one [b, s, d] fp32 activation
    first, last = rank_volumes(cfg, layout, m, 0), rank_volumes(cfg, layout, m, 1)
    # TP, first stage: per micro-batch 2 layers x (2 forward + 2 backward) all-reduces + the embedding's sum.
    assert first["tp"] == {"all_reduce": m * (2 * 4 + 1) * act}
    # TP, last stage: layers + the head input's gradient, and the loss statistics (max, then target + sum-exp).
    assert last["tp"] == {"all_reduce": m * (2 * 4 + 1) * act, "ce_max": m * 2 * 32 * 4,
                          "ce_stats": m * 2 * 2 * 32 * 4}
    # PP: each micro-batch's activation forward (first stage) or its gradient back (last stage).
    assert first["pp"] == last["pp"] == {"send": m * act}
    # Tied embedding: each end's vocabulary shard of the table, 256 / 2 x 64 fp32.
    assert first["embedding"] == last["embedding"] == {"all_reduce": 128 * 64 * 4}
    # DP: every local gradient once. First stage: token shard, positions, 2 layers; last: 2 layers, final LN, head copy.
    layer = (2 * 2 * 64 + (3 * 64 // 2 * 64 + 3 * 64 // 2) + (64 * 32 + 64) + (256 // 2 * 64 + 256 // 2)
             + (64 * 128 + 64))
    assert first["dp"] == {"all_reduce": (128 * 64 + 32 * 64 + 2 * layer) * 4}
    assert last["dp"] == {"all_reduce": (2 * layer + 2 * 64 + 128 * 64) * 4}


def test_sequence_parallel_and_distributed_optimizer_by_hand():
    cfg = make_config(PARITY_JOBS["2x2x2 sp dist-opt full-recompute"][1])
    layout, m = check_layout(cfg, 8)
    act = 2 * 32 * 64 * 4
    first = rank_volumes(cfg, layout, m, 0)
    # Per micro-batch and layer: all-gathers before qkv and fc1 (forward), their transposes in backward, and with
    # full recomputation the two forward all-gathers again; plus the embedding's backward all-gather.
    assert first["tp"]["all_gather"] == m * (2 * (2 + 2 + 2) + 1) * act
    # Reduce-scatters after proj and fc2, in backward before qkv and fc1, proj's replayed, the embedding's forward.
    assert first["tp"]["reduce_scatter"] == m * (2 * (2 + 2 + 1) + 1) * act
    # Sequence-sharded parameters summed over TP once per step: positions, per layer 2 LNs + 2 row biases.
    assert first["tp"]["all_reduce"] == (32 * 64 + 2 * (4 * 64 + 2 * 64)) * 4
    # Stage boundary tensors are sequence shards.
    assert first["pp"] == {"send": m * act // 2}
    # Distributed optimizer: each bucket padded to a multiple of dp, reduce-scattered, parameters all-gathered.
    buckets = bucket_numels(cfg, layout, 0, 0)
    assert len(buckets) == 2  # the regular parameters (one 25 MB bucket) and the deferred ones
    assert sum(buckets) == sum(p.numel for p in chunk_params(cfg, layout, 0, 0))
    padded = sum(-(-n // 2) * 2 for n in buckets) * 4
    assert first["dp"] == {"reduce_scatter": padded, "all_gather": padded}


def test_pipeline_bubble_formula():
    assert pipeline_bubble(4, 8) == pytest.approx(3 / 11)
    assert pipeline_bubble(4, 8, vp=2) == pytest.approx(3 / 19)
    assert pipeline_bubble(1, 8) == 0.0
