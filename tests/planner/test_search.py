"""The search on the GPT-3 175B preset, the CLI and its bad-input messages."""
import argparse
import json
import time

import pytest

from gpt3d.config import load_config
from gpt3d.planner import cli
from gpt3d.planner.hardware import GPUS
from gpt3d.planner.memory import LayoutError
from gpt3d.planner.search import plan


@pytest.fixture(scope="module")
def gpt3_plan():
    run = load_config("gpt3-175b")
    start = time.perf_counter()
    result = plan(run.model, GPUS["a100-80gb"], 1024, run.train.global_batch_size, 2048, top_k=5)
    print(f"\n175B on 1024 x a100-80gb: {result.candidates} layouts in {time.perf_counter() - start:.2f} s")
    return result


def test_best_layout_fits_and_keeps_tp_in_a_node(gpt3_plan):
    best = gpt3_plan.ranked[0]
    assert best.fits and best.memory.total <= best.memory_capacity
    assert best.layout.tp <= 8 and best.layout.num_gpus == 1024
    assert [p.tokens_per_s for p in gpt3_plan.ranked] == sorted((p.tokens_per_s for p in gpt3_plan.ranked),
                                                                reverse=True)
    assert len(gpt3_plan.ranked) == 5
    t = best.time
    assert t.total == pytest.approx(best.iteration_time_s)
    assert best.tokens_per_s == pytest.approx(1536 * 2048 / best.iteration_time_s)
    assert 0 < best.mfu < 1 and best.hardware_tflops_per_gpu >= best.model_tflops_per_gpu


def test_discard_reasons_are_reported(gpt3_plan):
    reasons = gpt3_plan.discarded
    assert reasons["does not fit"].count > 0 and "GiB usable on a100-80gb" in reasons["does not fit"].example
    assert reasons["does not divide: pp*vp does not divide n_layers"].count > 0
    total = sum(g.count for g in reasons.values())
    assert total + len([p for p in gpt3_plan.ranked]) <= gpt3_plan.candidates


def args(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_json(capsys):
    assert cli.run(args("gpt3-175b", "--gpus", "1024", "--gpu", "h100-80gb", "--top", "2", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_gpus"] == 1024 and len(out["layouts"]) == 2 and out["gpu"]["name"] == "h100-80gb"
    first = out["layouts"][0]
    keys = {"params", "grads", "optimizer", "activations", "deferred_w", "comm_buffers", "total"}
    # zero-bubble schedules also give the joint peak of activations and deferred-W gradients
    assert set(first["memory"]) in (keys, keys | {"held_peak"})
    assert set(first["time"]) >= {"compute", "tp_comm", "pp_bubble", "dp_comm_exposed", "total"}
    assert first["fits"] is True


def test_cli_table(capsys):
    assert cli.run(args("gpt3-xl", "--gpus", "16", "--gpu", "a100-40gb", "--top", "3")) == 0
    out = capsys.readouterr().out
    assert "Top layouts by predicted throughput" in out and "Memory per GPU" in out and "Discarded layouts" in out


@pytest.mark.parametrize("argv,message", [
    (("gpt3-175b", "--gpus", "8", "--gpu", "v100"), "unknown GPU 'v100'; known GPUs: a100-80gb, a100-40gb"),
    (("gpt3-175b", "--gpus", "8", "--gpu", "a100-40gb"), "smallest cluster that works: 96 GPUs"),
    (("gpt3-175b", "--gpus", "1024", "--gpu", "a100-80gb", "--global-batch", "7"),
     "does not divide: micro_batch*dp does not divide the global batch: 1782 layouts"),  # x the schedules
    (("gpt3-xl", "--gpus", "0", "--gpu", "a100-80gb"), "--gpus must be >= 1"),
    (("no-such-config", "--gpus", "8", "--gpu", "a100-80gb"), "no such file 'no-such-config'"),
])
def test_cli_bad_input(capsys, argv, message):
    assert cli.run(args(*argv)) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("gpt3d plan: ") and message in err


def test_no_layout_fits_names_the_minimum():
    run = load_config("gpt3-175b")
    with pytest.raises(LayoutError) as err:
        plan(run.model, GPUS["a100-40gb"], 8, 1536, 2048)
    text = str(err.value)
    assert "does not fit: " in text and "needs" in text and "smallest cluster that works: 96 GPUs, e.g. tp8 pp12" in text
