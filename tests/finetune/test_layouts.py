"""Every objective gives the single-process losses and parameters in layouts tp2, pp2, dp2 and tp2 x pp2 x dp2 (plus
tp2 with sequence parallelism), and the single-process first loss equals an independent forward of the whole model
(build_gpt + the objective, no gpt3d.parallel). Tolerances as tests/parallel/test_model_parity.py: only the order of
floating-point sums changes."""
from __future__ import annotations

import pytest
import torch

from tests.parallel.harness import layout_overrides, register, results

from .tasks import prepare, run_layout_job

TASKS = prepare()
STEPS = 3
BASE = ["preset=tiny-test", "model.vocab_size=300", "model.n_layers=2", "model.d_model=32", "model.n_heads=2",
        "model.seq_len=128", "train.threads=1", "train.global_batch_size=4", "train.micro_batch_size=1",
        "optim.lr=3e-3", "optim.warmup_steps=1", "optim.eps=1e-6"]
# Adam's eps is raised from 1e-8 so that an element whose gradient is at rounding level (~1e-9) moves by far less
# than lr: with 1e-8 its first steps are ~lr whatever the gradient's size, in a direction set by rounding noise.
LAYOUTS = {"tp2": (2, layout_overrides(2, 1, 1)), "pp2": (2, layout_overrides(1, 2, 1)),
           "dp2": (2, layout_overrides(1, 1, 2)), "2x2x2": (8, layout_overrides(2, 2, 2)),
           "tp2 sp": (2, layout_overrides(2, 1, 1) + ["parallel.sequence_parallel=true"]),
           "pp2 full-recompute": (2, layout_overrides(1, 2, 1) + ["parallel.recompute=full"]),
           "tp2 selective-recompute": (2, layout_overrides(2, 1, 1) + ["parallel.recompute=selective"])}
# Variants run for some objectives only: sequence parallelism (the LM head's gather and the task heads' gather) and
# recomputation (the packed attention mask passed to recomputed blocks and attention cores).
ONLY = {"tp2 sp": ("sft", "reward"), "pp2 full-recompute": ("dpo",), "tp2 selective-recompute": ("sft",)}

# The pairwise loss is unchanged by adding a constant to every reward, so these two gradients are exactly 0 in exact
# arithmetic: Adam normalises their rounding noise into steps of ~lr, which differ between layouts.
# Likewise a multiple-choice softmax over the choices' scores ignores the head's bias.
SHIFT_INVARIANT = {"reward": ("final_ln.bias", "task_heads.reward.bias"), "classify-choice": ("task_heads.classify.bias",)}


def finetune_job(rank: int, world_size: int, overrides: list[str]) -> dict:
    from gpt3d.finetune.data import build_finetune_data
    from gpt3d.finetune.trainer import ObjectiveTrainer
    return run_layout_job(rank, world_size, BASE + overrides, ObjectiveTrainer, build_finetune_data, STEPS)


def independent_first_loss(rank: int, world_size: int, overrides: list[str]) -> float:
    """Mean over the micro-batches of step 1 of the objective on the whole model, with the DPO reference being the
    same initial model."""
    from gpt3d.config import load_config
    from gpt3d.finetune.data import build_finetune_data
    from gpt3d.finetune.objectives import PackedBatch, objective_for, reference_logps
    from gpt3d.model.gpt import build_gpt
    from gpt3d.train.loop import global_batch
    cfg = load_config(None, BASE + overrides)
    model = build_gpt(cfg.model, cfg.train.seed)
    rows = global_batch(build_finetune_data(cfg)["train"], 0, cfg.train.global_batch_size)
    losses = []
    for i in range(len(rows)):
        batch = PackedBatch.from_rows(rows[i:i + 1], torch.device("cpu"))
        if cfg.train.objective == "dpo":
            model.objective = reference_logps
            batch.reference = model(batch.tokens, batch, layout=batch.layout)
        model.objective = objective_for(cfg)
        losses.append(model(batch.tokens, batch, layout=batch.layout).item())
    return sum(losses) / len(losses)


for task, overrides in TASKS.items():
    register(1, f"{task} 1x1x1", finetune_job, overrides, group="finetune")
    register(1, f"{task} independent", independent_first_loss, overrides, group="finetune")
    for layout, (world, extra) in LAYOUTS.items():
        if task in ONLY.get(layout, (task,)):
            register(world, f"{task} {layout}", finetune_job, overrides + extra, group="finetune")

CASES = [(task, layout) for task in TASKS for layout in LAYOUTS if task in ONLY.get(layout, (task,))]


@pytest.mark.parametrize("task", list(TASKS))
def test_single_process_first_loss_is_the_models(task):
    got = results(1, f"{task} 1x1x1", group="finetune")[0]["losses"][0]
    assert got == pytest.approx(results(1, f"{task} independent", group="finetune")[0], rel=1e-6)


@pytest.mark.parametrize("task,layout", CASES)
def test_layout_gives_single_process_losses_and_parameters(task, layout):
    world = LAYOUTS[layout][0]
    got, ref = results(world, f"{task} {layout}", group="finetune")[0], results(1, f"{task} 1x1x1", group="finetune")[0]
    assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert ref["losses"][-1] != ref["losses"][0]  # the optimizer stepped
    for got_step, ref_step in zip(got["metrics"], ref["metrics"]):  # accuracies and margins, where reported
        assert got_step == pytest.approx(ref_step, rel=1e-5, abs=1e-6)
    assert sorted(got["params"]) == sorted(ref["params"])
    for name, value in ref["params"].items():
        if name in SHIFT_INVARIANT.get(task, ()):
            continue
        torch.testing.assert_close(got["params"][name], value, atol=5e-5, rtol=0, msg=lambda m: f"{name}: {m}")
