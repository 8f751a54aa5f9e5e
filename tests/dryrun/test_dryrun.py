"""`gpt3d dryrun`: one rank of the real code under fake tensors, checked against a real CPU trainer (independent
measurements: the trainer's own storages, and the tensors autograd saves through saved-tensor hooks), its exact
parameter counts at 175B, the planner within 10% per category, and its refusals."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch

from gpt3d.cli import main as gpt3d
from gpt3d.config import load_config
from gpt3d.dryrun.compare import COMPARED, compare
from gpt3d.dryrun.run import dry_run
from gpt3d.parallel.context import Layout
from gpt3d.planner.memory import stage_parameters
from gpt3d.train.runtime import init_runtime
from gpt3d.train.trainer import Trainer

SMALL = ["preset=tiny-test", "model.n_layers=2", "model.d_model=256", "model.n_heads=4", "model.seq_len=256",
         "model.vocab_size=1024", "train.global_batch_size=4", "train.micro_batch_size=4", "train.dtype=bf16",
         "train.device=cpu"]


def call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = gpt3d(list(argv))
    return code, out.getvalue(), err.getvalue()


def storage_bytes(tensors) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def test_dry_run_equals_a_real_cpu_trainer():
    # The dry run models the GPU's attention core (sdpa); under auto, a CPU with fast bf16 GEMMs (AMX, or AVX512-BF16
    # on AMD) would run the blocked core instead and save other activations: compare like with like.
    cfg = load_config(None, SMALL + ["model.dense_attention=sdpa"])
    dry = dry_run(cfg, 1, 0).peak.category_max
    trainer = Trainer(cfg, init_runtime(cfg, 0, 1, 0, 1))
    buckets = trainer.sync.all_buckets()
    assert dry["params"] == storage_bytes(b.param_data for b in buckets)  # bf16 weights
    assert dry["grads"] == storage_bytes(b.grad_data for b in buckets)  # fp32 main grads
    assert dry["optimizer"] == storage_bytes(t for s in trainer.optimizer.states
                                             for t in (s.master, s.exp_avg, s.exp_avg_sq))
    # Activations: what autograd really saves in a forward of one micro-batch (parameters excluded), plus the
    # stage's output (the loss here), which the pipeline runner keeps until the micro-batch's backward.
    params = {p.untyped_storage().data_ptr() for c in trainer.chunks for p in c.parameters()}
    saved = []
    tokens = torch.from_numpy(np.zeros((4, 256), dtype=np.int64))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = trainer.chunks[0](tokens, tokens)
    real_saved = storage_bytes(t for t in saved if t.untyped_storage().data_ptr() not in params)
    assert dry["activations"] == real_saved + loss.untyped_storage().nbytes()


def test_175b_one_rank_at_tp8_pp16_dp8():
    code, out, err = call("dryrun", "gpt3-175b", "--dp", "8", "--json")
    assert code == 0, err
    rank = json.loads(out)["ranks"][0]
    cfg = load_config("gpt3-175b", ["parallel.dp=8"])
    params = stage_parameters(cfg.model, 8, 16, 0)  # the rank's parameters, counted from the model's shapes
    assert rank["stage"] == 0 and rank["microbatches_run"] == 16 and rank["microbatches"] == 192
    assert rank["category_max"]["params"] == 2 * params  # bf16 weights
    assert rank["category_max"]["grads"] == 4 * params  # fp32 main grads
    assert rank["category_max"]["optimizer"] == pytest.approx(12 * params / 8, abs=12 * 8)  # dp-padded buckets
    assert rank["fits"] and 20 * 2 ** 30 < rank["peak"] < 60 * 2 ** 30


LAYOUTS = {  # name -> (preset, stage, overrides)
    "175b default": ("gpt3-175b", 0, ["parallel.dp=8"]),
    "13b tp8 pp4 no sp": ("gpt3-13b", 0, ["parallel.tp=8", "parallel.pp=4", "parallel.dp=4",
                                          "parallel.recompute=none"]),
    "1.3b tp2 sp selective": ("gpt3-xl", 0, ["parallel.tp=2", "parallel.dp=16", "parallel.sequence_parallel=true",
                                             "parallel.recompute=selective"]),
    "1.3b pp4 middle stage mb2": ("gpt3-xl", 1, ["parallel.pp=4", "parallel.dp=8", "train.micro_batch_size=2",
                                                 "parallel.recompute=none"]),
    # Zero-bubble schedules: the output gradients kept for deferred W's (deferred_w) grow toward the last stage;
    # ZB-V's rank 0 holds the head as well as the embedding. 8 micro-batches (all run).
    "1.3b pp4 zbv first stage": ("gpt3-xl", 0, ["parallel.pp=4", "parallel.dp=8", "parallel.schedule=zbv",
                                                "parallel.recompute=none", "train.global_batch_size=64"]),
    "1.3b pp4 zbv last stage": ("gpt3-xl", 3, ["parallel.pp=4", "parallel.dp=8", "parallel.schedule=zbv",
                                               "parallel.recompute=none", "train.global_batch_size=64"]),
    "1.3b tp2 pp4 zbh1 sp full-recompute last stage": (
        "gpt3-xl", 3, ["parallel.tp=2", "parallel.pp=4", "parallel.dp=4", "parallel.schedule=zbh1",
                       "parallel.sequence_parallel=true", "parallel.recompute=full", "train.global_batch_size=64"]),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_planner_matches_the_dry_run_per_category(name):
    preset, stage, overrides = LAYOUTS[name]
    cfg = load_config(preset, overrides) if preset == "gpt3-175b" else load_config(None, [f"preset={preset}",
                                                                                           *overrides])
    par = cfg.parallel
    layout = Layout(par.tp, par.pp, par.dp, par.vp)
    result = dry_run(cfg, layout.world_size, layout.rank_of(0, 0, stage))
    comparison = compare(cfg, result, par.dp)
    for category in COMPARED:
        assert comparison.agrees(category, result.peak.total), (
            f"{category}: planner {comparison.planned[category]:.0f} vs dry run {comparison.dry[category]}")
    if par.schedule in ("zbh1", "zbv"):  # not vacuous: the deferred W's hold a real share, most on the last stage
        assert comparison.dry["deferred_w"] > (0.1 if stage == par.pp - 1 else 0.01) * result.peak.total


def test_plan_evaluates_a_given_layout():
    code, out, err = call("plan", "gpt3-175b", "--gpus", "1536", "--gpu", "a100-80gb",
                          "--layout", "tp=8,pp=12,vp=1,mb=1,sp=0,recompute=full")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "layout tp8 pp12 dp16 vp1 mb1 rc=full dopt on 1536 x a100-80gb"
    assert lines[3].startswith("  memory, first pipeline stage: ") and "GiB per GPU (params 3.6, grads 7.1" in lines[3]
    assert lines[4].startswith("  fits: ")
    code, out, err = call("plan", "gpt3-175b", "--gpus", "1536", "--gpu", "a100-80gb", "--layout", "tp=8,pq=2")
    assert code == 2 and err == ("gpt3d plan: --layout 'tp=8,pq=2': bad part 'pq=2'; expected comma-separated "
                                 "KEY=VALUE with keys tp, pp, dp, vp, mb, sp, recompute, dopt, schedule (e.g. "
                                 "tp=8,pp=12,dp=4,vp=1,mb=1,sp=0,recompute=full)\n")
    code, out, err = call("plan", "gpt3-175b", "--gpus", "1024", "--gpu", "a100-80gb", "--layout", "tp=8,pp=12,dp=4")
    assert code == 2 and "tp8*pp12*dp4 = 384 GPUs, not the 1024 given" in err


def test_bad_input_is_one_clear_error():
    assert call("dryrun", "gpt3-175b", "--dp", "8", "--rank", "5000")[2] == (
        "gpt3d dryrun: --rank 5000 is not a rank of this layout (0 .. 1023)\n")
    assert call("dryrun", "gpt3-175b")[2] == (
        "gpt3d dryrun: the config leaves parallel.dp to the number of GPUs; pass --dp (e.g. --dp 8 for 1024 GPUs at "
        "tp8 pp16 = 8)\n")
    assert call("dryrun", "gpt3-175b", "--dp", "8", "--tp", "7")[2] == (
        "gpt3d dryrun: model.n_heads=96 is not divisible by tp=7; pick tp dividing the heads\n")
    assert call("dryrun", "gpt3-175b", "--dp", "8", "--gpu", "v100")[2] == (
        "gpt3d dryrun: unknown GPU 'v100'; known GPUs: a100-80gb, a100-40gb, h100-80gb (or measure_cpu_spec() for "
        "this CPU)\n")
