"""PPO-ptx gives the single-process losses, metrics and parameters in layouts tp2, pp2, dp2 and tp2 x pp2 x dp2 (and
tp2 with sequence parallelism): rollouts sampled by the inference engine in the training layout, the frozen reference
and (wider) reward model run in the same layout, whitening statistics over the data-parallel replicas, the PPO epochs
and the ptx micro-batches. Tolerances as tests/finetune/test_layouts.py: only the order of floating-point sums
changes (the rollouts, sampled with per-request seeded noise, are the same tokens in every layout)."""
from __future__ import annotations

import pytest
import torch

from tests.finetune.tasks import run_layout_job
from tests.parallel.harness import layout_overrides, register, results

from .tasks import MODEL, ppo_overrides, prepare

ROOT = prepare()
STEPS = 2
BASE = ["preset=tiny-test", *MODEL, "train.global_batch_size=4", "train.micro_batch_size=1", "optim.lr=3e-3",
        "optim.warmup_steps=1", "optim.eps=1e-6", "finetune.ppo.max_new_tokens=6", "finetune.ppo.epochs=2",
        "finetune.ppo.kl_coef=0.05", "finetune.ppo.ptx_batch_size=2"]
LAYOUTS = {"tp2": (2, layout_overrides(2, 1, 1)), "pp2": (2, layout_overrides(1, 2, 1)),
           "dp2": (2, layout_overrides(1, 1, 2)), "2x2x2": (8, layout_overrides(2, 2, 2)),
           "tp2 sp": (2, layout_overrides(2, 1, 1) + ["parallel.sequence_parallel=true"])}


def ppo_job(rank: int, world_size: int, overrides: list[str]) -> dict:
    from gpt3d.align.data import build_prompts
    from gpt3d.align.trainer import AlignTrainer
    return run_layout_job(rank, world_size, BASE + ppo_overrides(ROOT) + overrides, AlignTrainer, build_prompts, STEPS)


register(1, "ppo 1x1x1", ppo_job, [], group="align")
for name, (world, extra) in LAYOUTS.items():
    register(world, f"ppo {name}", ppo_job, extra, group="align")


def test_single_process_run_learns_and_reports():
    ref = results(1, "ppo 1x1x1", group="align")[0]
    first, second = ref["metrics"]
    assert first["kl"] == 0.0 and second["kl"] != 0.0  # the first rollouts are the reference's own samples
    assert 0 < second["clip_fraction"] < 1 and first["value_loss"] > 0 and first["entropy"] > 0
    assert 0 < first["length"] <= 6
    assert ref["losses"][0] != ref["losses"][1]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_gives_single_process_losses_and_parameters(layout):
    world = LAYOUTS[layout][0]
    got, ref = results(world, f"ppo {layout}", group="align")[0], results(1, "ppo 1x1x1", group="align")[0]
    assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    for got_step, ref_step in zip(got["metrics"], ref["metrics"]):
        # abs 1e-5: the KL is a difference of two sums of log-probabilities of ~30 nats each (fp32: ~2e-6 apart)
        assert got_step == pytest.approx(ref_step, rel=1e-5, abs=1e-5)
    assert sorted(got["params"]) == sorted(ref["params"])
    for name, value in ref["params"].items():
        torch.testing.assert_close(got["params"][name], value, atol=5e-5, rtol=0, msg=lambda m: f"{name}: {m}")
