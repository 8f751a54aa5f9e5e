"""Run training steps of a tiny config in a given layout and collect everything the parallel tests compare.

One spawned world can run several jobs (configs of the same world size, each a fresh Trainer with the same seed), so
a test pays the start-up of a world once. Every rank returns its own record (coordinates, per-step bytes per group and
operation, StageRunner events and busy time); rank 0 also returns the losses, grad norms and the full (gathered)
gradients and parameters.
"""
from __future__ import annotations

import datetime
from typing import Callable, Optional

import numpy as np
import torch.distributed as dist

from gpt3d.config import load_config
from gpt3d.launch.spawn import spawn
from gpt3d.parallel.gather import gather_full
from gpt3d.train.runtime import init_runtime
from gpt3d.train.trainer import Trainer

BASE = ["model.n_layers=4", "model.d_model=64", "model.n_heads=4", "model.seq_len=32", "model.vocab_size=250",
        "model.vocab_pad_multiple=64", "train.global_batch_size=8", "train.micro_batch_size=2",
        "optim.warmup_steps=2", "optim.lr=3e-3", "train.threads=1"]


def make_config(overrides: list[str]):
    return load_config(None, ["preset=tiny-test"] + BASE + list(overrides))


def synthetic_batches(steps: int, batch: int, seq_len: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    """Learnable token streams (a noisy repeating pattern), so the loss falls over a few steps."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        start = rng.integers(0, vocab, size=(batch, 1))
        stride = rng.integers(1, 4, size=(batch, 1))
        seq = (start + stride * np.arange(seq_len + 1)) % vocab
        noise = rng.random(seq.shape) < 0.1
        seq[noise] = rng.integers(0, vocab, size=noise.sum())
        out.append(seq.astype(np.int64))
    return out


def job(overrides: list[str], steps: int = 1, grads_after: Optional[int] = 1,
        micro_counts: Optional[list[int]] = None) -> dict:
    """One training run: `steps` steps of `overrides` (on top of BASE); the gathered gradients are those of the batch
    of step `grads_after` (None: never), read before that step's optimizer update. `micro_counts`, if given, sets
    the number of micro-batches of each step (the batch fed to the step is micro_count x micro_batch x dp
    samples) instead of the configured global batch."""
    return {"overrides": list(overrides), "steps": steps, "grads_after": grads_after, "micro_counts": micro_counts}


def reduced_gradients(trainer: Trainer, batch: np.ndarray) -> dict:
    """The full gradients of one global batch as the optimizer receives them: the first half of Trainer.train_step
    (the schedule over the micro-batches, then the data-parallel/embedding/sequence-parallel reductions), gathered
    to full shape, without stepping. The optimizer may rescale its gradient buffers in place (the fused AdamW
    unscales and clips them), so the gradients are read before it runs; the buffers are zeroed by the next step."""
    inputs, labels = trainer.micro_batches(batch)
    for chunk in trainer.chunks:
        chunk.train()
    runner = trainer.make_runner(inputs, labels)
    trainer.sync.zero_grad()
    runner.run(trainer.pipeline_schedule(len(inputs)))
    trainer.sync.finish()
    trainer.sync.gather_grads()
    grads = gather_full(trainer.ctx, trainer.chunks, "grad")
    trainer.sync.zero_grad()
    return grads


def _run_job(rank: int, world_size: int, spec: dict) -> dict:
    cfg = make_config(spec["overrides"])
    rt = init_runtime(cfg, rank, world_size, rank, world_size)
    ctx = rt.ctx
    trainer = Trainer(cfg, rt)
    steps, micro_counts = spec["steps"], spec["micro_counts"]
    if micro_counts is None:
        sizes = [cfg.train.global_batch_size] * steps
    else:
        sizes = [m * cfg.train.micro_batch_size * rt.ctx.layout.dp for m in micro_counts]
    losses, norms, per_step, grads = [], [], [], None
    for i, size in enumerate(sizes):
        batch = synthetic_batches(1, size, cfg.train.seq_len, cfg.model.vocab_size, seed=i)[0]
        if spec["grads_after"] is not None and i + 1 == spec["grads_after"]:
            grads = reduced_gradients(trainer, batch)
        result = trainer.train_step(batch)
        runner = trainer.last_runner
        losses.append(result.loss)
        norms.append(result.grad_norm)
        per_step.append({
            "bytes": {g.name: dict(g.bytes_moved) for g in ctx.groups() + [ctx.world_group]},
            "events": list(runner.events), "busy_s": runner.busy_s, "seconds": result.seconds,
            "num_micro": runner.num_micro,
        })
    params = gather_full(ctx, trainer.chunks, "param")
    out = {"rank": rank, "coords": {"tp": ctx.tp_rank, "dp": ctx.dp_rank, "pp": ctx.pp_rank},
           "num_micro": rt.num_micro, "steps": per_step}
    if rank == 0:
        out.update({"losses": losses, "norms": norms, "grads": grads, "params": params})
    return out


def train_job(rank: int, world_size: int, spec: dict) -> dict:
    """A registrable task: one job (see `job`)."""
    return _run_job(rank, world_size, spec)


def run_jobs(rank: int, world_size: int, jobs: list[dict]) -> list[dict]:
    return [_run_job(rank, world_size, spec) for spec in jobs]


def run_world(world_size: int, jobs: list[dict]) -> list[list[dict]]:
    """Run `jobs` on `world_size` ranks (spawned gloo processes; in this process for one rank).
    Returns results[job][rank]."""
    if world_size == 1:
        per_rank = [run_jobs(0, 1, jobs)]
    else:
        per_rank = spawn(run_jobs, world_size, jobs, collect=True)
    return [[per_rank[r][j] for r in range(world_size)] for j in range(len(jobs))]


def run(rank: int, world_size: int, overrides: list[str], steps: int, grads_after: int = 1) -> dict:
    """Backwards-compatible single run: rank 0's record."""
    out = _run_job(rank, world_size, job(overrides, steps, grads_after))
    return out if rank == 0 else {}


# -- one spawned world per world size, shared by every test module collected in this session ------------------------
# Test modules register the tasks they need at import (collection) time; the first test that asks for a result runs
# every task registered for that world size in one spawned world, so the suite pays each world's start-up once.
# A `group` keeps a module's tasks in a world of their own: the fine-tuning tasks failed when run in the same
# in-process world as the pre-training parity tasks (full-suite order only), so they do not share it.
_TASKS: dict[tuple[int, str], dict[str, tuple[Callable, tuple]]] = {}
_RESULTS: dict[tuple[int, str], dict[int, dict]] = {}


def register(world_size: int, key: str, fn: Callable, *args, group: str = "shared") -> str:
    """Register task `fn(rank, world_size, *args)` (a module-level function) under `key`; returns the key."""
    tasks = _TASKS.setdefault((world_size, group), {})
    assert key not in tasks or tasks[key] == (fn, args), f"task {key!r} registered twice with different arguments"
    assert (world_size, group) not in _RESULTS, f"world {world_size} already ran; register tasks at import time"
    tasks[key] = (fn, args)
    return key


def register_job(world_size: int, key: str, spec: dict) -> str:
    return register(world_size, key, train_job, spec)


def _run_tasks(rank: int, world_size: int, tasks: dict[str, tuple[Callable, tuple]]) -> dict:
    if world_size > 1 and not dist.is_initialized():
        # A generous timeout for the world; each Trainer's own groups use parallel.comm_timeout_s.
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=600))
    return {key: fn(rank, world_size, *args) for key, (fn, args) in tasks.items()}


def results(world_size: int, key: str, group: str = "shared") -> list:
    """Per-rank results of task `key` of the world of `world_size` ranks (running that world on first use)."""
    world = (world_size, group)
    if world not in _RESULTS:
        tasks = _TASKS.get(world, {})
        if world_size == 1:
            per_rank = [_run_tasks(0, 1, tasks)]
        else:
            per_rank = spawn(_run_tasks, world_size, tasks, collect=True)
        _RESULTS[world] = dict(enumerate(per_rank))
    return [_RESULTS[world][r][key] for r in range(world_size)]


# -- the layouts the model-level tests run (tp x pp x dp), shared by the parity and the accounting tests --------------
def layout_overrides(tp: int, pp: int, dp: int, vp: int = 1) -> list[str]:
    return [f"parallel.tp={tp}", f"parallel.pp={pp}", f"parallel.dp={dp}", f"parallel.vp={vp}"]


SP = "parallel.sequence_parallel=true"
DIST_OPT = "parallel.distributed_optimizer=true"
FULL = "parallel.recompute=full"
SELECTIVE = "parallel.recompute=selective"
GPIPE = "parallel.schedule=gpipe"
ZBH1 = "parallel.schedule=zbh1"
ZBV = "parallel.schedule=zbv"
INTERLEAVED = "parallel.schedule=interleaved"
GLOO = "parallel.cpu_collectives=gloo"  # not shared memory: reductions overlap backward
UNFUSED = "parallel.gradient_accumulation_fusion=false"
EIGHT_LAYERS = "model.n_layers=8"  # pp4 with two chunks per rank (interleaved vp2, ZB-V) needs 8 layer chunks
MICRO_1 = "train.micro_batch_size=1"  # pp4 x dp2 with 8 samples: 4 micro-batches (interleaved and ZB-V need m >= pp)
TRAJECTORY_STEPS = 20  # the loss trajectories of the key layouts, optimizer stepping
SHORT_STEPS = 5  # gradient checks (after step 1) and a short trajectory for every other layout
PP4_STEPS = 3  # the pp4 x (tp2 | dp2) layouts of every schedule: gradients after step 1, three optimizer steps

# name -> (world size, overrides on top of BASE, steps)
PARITY_JOBS: dict[str, tuple[int, list[str], int]] = {
    "2x2x2": (8, layout_overrides(2, 2, 2), TRAJECTORY_STEPS),
    "2x2x2 sp dist-opt full-recompute": (8, layout_overrides(2, 2, 2) + [SP, DIST_OPT, FULL], SHORT_STEPS),
    "1x4x2 dist-opt selective-recompute": (8, layout_overrides(1, 4, 2) + [DIST_OPT, SELECTIVE], SHORT_STEPS),
    "4x1x2 sp": (8, layout_overrides(4, 1, 2) + [SP], SHORT_STEPS),
    "2x2x1 vp2": (4, layout_overrides(2, 2, 1, vp=2), TRAJECTORY_STEPS),
    "1x2x2 vp2 dist-opt": (4, layout_overrides(1, 2, 2, vp=2) + [DIST_OPT], SHORT_STEPS),
    "2x1x2 full-recompute": (4, layout_overrides(2, 1, 2) + [FULL], SHORT_STEPS),
    "1x4x1 gpipe": (4, layout_overrides(1, 4, 1) + [GPIPE], SHORT_STEPS),
    # Zero-bubble schedules (B/W-split linears, deferred weight gradients through GradSynchronizer.accumulate_weight_grad).
    "2x2x2 zbv sp dist-opt full-recompute": (8, layout_overrides(2, 2, 2) + [ZBV, SP, DIST_OPT, FULL], SHORT_STEPS),
    "2x2x1 zbh1 sp selective-recompute": (4, layout_overrides(2, 2, 1) + [ZBH1, SP, SELECTIVE], SHORT_STEPS),
    "1x2x2 zbh1 dist-opt full-recompute": (4, layout_overrides(1, 2, 2) + [ZBH1, DIST_OPT, FULL], SHORT_STEPS),
    "1x4x1 zbh1": (4, layout_overrides(1, 4, 1) + [ZBH1], SHORT_STEPS),
    "1x2x2 zbv selective-recompute": (4, layout_overrides(1, 2, 2) + [ZBV, SELECTIVE], SHORT_STEPS),
    # Every schedule at pp4 with tp2 (sequence parallel, one recompute mode) and with dp2 (distributed optimizer,
    # the other recompute mode); with pp2 above, every schedule is checked at pp2 and pp4 with tp2, dp2, SP,
    # both recomputes and the distributed optimizer.
    "2x2x2 gpipe sp dist-opt selective-recompute": (8, layout_overrides(2, 2, 2) + [GPIPE, SP, DIST_OPT, SELECTIVE],
                                                    PP4_STEPS),
    "2x4x1 gpipe sp full-recompute": (8, layout_overrides(2, 4, 1) + [GPIPE, SP, FULL], PP4_STEPS),
    "1x4x2 gpipe dist-opt selective-recompute": (8, layout_overrides(1, 4, 2) + [GPIPE, DIST_OPT, SELECTIVE],
                                                 PP4_STEPS),
    "2x4x1 1f1b sp full-recompute": (8, layout_overrides(2, 4, 1) + [SP, FULL], PP4_STEPS),
    "2x4x1 vp2 sp selective-recompute": (8, layout_overrides(2, 4, 1, vp=2) + [INTERLEAVED, EIGHT_LAYERS, SP,
                                                                              SELECTIVE], PP4_STEPS),
    "1x4x2 vp2 dist-opt full-recompute": (8, layout_overrides(1, 4, 2, vp=2) + [INTERLEAVED, EIGHT_LAYERS, MICRO_1,
                                                                               DIST_OPT, FULL], PP4_STEPS),
    "2x4x1 zbh1 sp full-recompute": (8, layout_overrides(2, 4, 1) + [ZBH1, SP, FULL], PP4_STEPS),
    "1x4x2 zbh1 dist-opt selective-recompute": (8, layout_overrides(1, 4, 2) + [ZBH1, DIST_OPT, SELECTIVE],
                                                PP4_STEPS),
    "2x4x1 zbv sp selective-recompute": (8, layout_overrides(2, 4, 1) + [ZBV, EIGHT_LAYERS, SP, SELECTIVE],
                                         PP4_STEPS),
    "1x4x2 zbv dist-opt full-recompute": (8, layout_overrides(1, 4, 2) + [ZBV, EIGHT_LAYERS, MICRO_1, DIST_OPT, FULL],
                                          PP4_STEPS),
    # Over gloo, each bucket's reduction starts asynchronously during backward when its last gradient is in (through
    # shared memory, the default on one host, the reduction is synchronous and runs after backward): the fused weight
    # gradients mark their parameters ready from B, or from the last W under a zero-bubble schedule.
    "1x1x2 gloo": (2, layout_overrides(1, 1, 2) + [GLOO], SHORT_STEPS),
    "1x2x2 zbh1 dist-opt gloo": (4, layout_overrides(1, 2, 2) + [ZBH1, DIST_OPT, GLOO], SHORT_STEPS),
    # Gradient-accumulation fusion off: autograd's weight gradients, and the store's deferred ones added unfused;
    # at tp2, the vocabulary-parallel head through autograd (fused, every tp > 1 layout above runs it store-fed).
    "1x2x2 zbv unfused": (4, layout_overrides(1, 2, 2) + [ZBV, UNFUSED], SHORT_STEPS),
    "2x1x1 unfused": (2, layout_overrides(2, 1, 1) + [UNFUSED], SHORT_STEPS),
    "2x1x1": (2, layout_overrides(2, 1, 1), SHORT_STEPS),
    "1x2x1": (2, layout_overrides(1, 2, 1), SHORT_STEPS),
    "1x1x2": (2, layout_overrides(1, 1, 2), SHORT_STEPS),
    "1x1x1": (1, layout_overrides(1, 1, 1), SHORT_STEPS),
}


def model_overrides(overrides: list[str]) -> tuple[str, ...]:
    """The overrides that change the model itself (the reference runs the same model)."""
    return tuple(o for o in overrides if o.startswith("model."))


def reference_key(name: str) -> str:
    """The task name of the single-process reference a layout of PARITY_JOBS is compared with."""
    _, overrides, steps = PARITY_JOBS[name]
    return " ".join((f"reference {steps} steps",) + model_overrides(overrides))


def reference_job(rank: int, world_size: int, steps: int, overrides: tuple[str, ...] = ()) -> dict:
    """The unsharded reference: the whole model (build_gpt) in this process, the loss of the whole global batch in one
    forward, torch's clip_grad_norm_ and torch.optim.AdamW (decay on matrices only, as gpt3d's optimizer): nothing of
    gpt3d.parallel is involved. Returns what a layout job returns on rank 0."""
    import torch
    from gpt3d.model.gpt import build_gpt
    from gpt3d.parallel.optimizer import lr_at
    cfg = make_config(list(overrides))
    torch.set_num_threads(1)
    model = build_gpt(cfg.model, cfg.train.seed)
    params = list(model.parameters())
    o = cfg.optim
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    losses, norms, grads = [], [], None
    for i in range(steps):
        tokens = torch.from_numpy(synthetic_batches(1, cfg.train.global_batch_size, cfg.train.seq_len,
                                                    cfg.model.vocab_size, seed=i)[0])
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        if i == 0:
            grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        norms.append(torch.nn.utils.clip_grad_norm_(params, o.grad_clip).item())
        losses.append(loss.item())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i, o, cfg.train.steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    params_out = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {"rank": 0, "losses": losses, "norms": norms, "grads": grads, "params": params_out}


def register_parity_jobs() -> None:
    """The single-process references and every layout of PARITY_JOBS (gradients gathered after step 1)."""
    for name, (world, overrides, steps) in PARITY_JOBS.items():
        register(1, reference_key(name), reference_job, steps, model_overrides(overrides))
        register_job(world, name, job(overrides, steps))
