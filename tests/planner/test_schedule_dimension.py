"""The planner's schedule dimension: zero-bubble bubble formulas agree with the simulator, ZB schedules keep 1F1B's
activation memory, and `gpt3d plan` shows what each schedule gains for GPT-3 175B on 1024 A100-80GB."""
from __future__ import annotations

import pytest

from gpt3d.config import load_config
from gpt3d.parallel.pipeline.schedules import build_schedule
from gpt3d.parallel.pipeline.simulator import Costs, simulate
from gpt3d.planner.hardware import GPUS
from gpt3d.planner.layout import Layout
from gpt3d.planner.performance import PerformanceOptions
from gpt3d.planner.schedule import bubble_fraction, bubble_slots, first_stage_layer_activations
from gpt3d.planner.schedule_gains import schedule_gains
from gpt3d.planner.search import plan


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 4), (4, 6), (4, 8), (8, 16), (8, 40)])
def test_bubble_slots_match_the_simulator(pp, m):
    for kind, vp in (("1f1b", 1), ("zbh1", 1), ("zbv", 2)):
        sim = simulate(build_schedule(kind, pp, m, vp), Costs.per_stage(1, 1, 1, vp))  # T_F = T_B = T_W
        assert bubble_slots(pp, vp, kind, m) == pytest.approx((sim.makespan - 3 * m) / 3), kind
        assert bubble_fraction(pp, m, vp, kind) == pytest.approx(sim.bubble), kind
    assert bubble_slots(pp, 1, "zbh1", m) == pytest.approx((pp - 1) / 3)  # the paper's (p-1)(T_F+T_B-T_W)


def test_zero_bubble_schedules_keep_1f1b_activation_memory():
    for pp, m in ((4, 8), (8, 32)):
        base = first_stage_layer_activations(96, pp, 1, m, "1f1b")
        assert first_stage_layer_activations(96, pp, 1, m, "zbh1") == base
        assert first_stage_layer_activations(96, pp, 2, m, "zbv") == base
        assert max(simulate(build_schedule("zbv", pp, m, 2)).peak_activations) == pp  # = base / (96 / pp) layers


def test_layout_rejects_chunk_counts_a_schedule_cannot_run():
    with pytest.raises(ValueError, match="schedule zbv runs exactly 2 model chunks per rank, got vp=1"):
        Layout(tp=1, pp=2, dp=1, vp=1, schedule="zbv")
    with pytest.raises(ValueError, match="schedule zbh1 runs one model chunk per rank, got vp=2"):
        Layout(tp=1, pp=2, dp=1, vp=2, schedule="zbh1")


def test_gpt3_175b_on_1024_a100_schedule_gains():
    run = load_config("gpt3-175b")
    options = PerformanceOptions()
    result = plan(run.model, GPUS["a100-80gb"], 1024, 1536, 2048, top_k=3, options=options)
    rows = {r["schedule"]: r for r in schedule_gains(result, options)}
    assert sorted(rows) == sorted(["1f1b", "interleaved (vp 2)", "zbh1", "zbv"])
    base = rows["1f1b"]
    assert rows["zbh1"]["bubble_s"] == pytest.approx(base["bubble_s"] / 3)  # (p-1)/3 of 1F1B's (p-1) slots
    assert rows["zbv"]["bubble_s"] < rows["zbh1"]["bubble_s"]
    for name in ("zbh1", "zbv"):
        assert rows[name]["speedup_vs_1f1b"] > 1
        assert rows[name]["activations_gib"] == pytest.approx(base["activations_gib"])
    assert result.ranked[0].layout.schedule in ("zbh1", "zbv")  # the search picks a zero-bubble schedule
