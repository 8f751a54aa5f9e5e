"""The fit check `gpt3d submit` runs: the dry run of the first pipeline stage (the most loaded: it holds p
micro-batches in flight) against the GPU, refusing with the dry run's per-category figures and the smallest changes
that fit."""
from __future__ import annotations

from gpt3d.config.run import RunConfig
from gpt3d.planner.hardware import GiB, get_gpu
from gpt3d.planner.memory import LayoutError, usable_bytes

from .compare import COMPARED, compare

DRY_RUN_BEYOND = 2.0
"""`gpt3d submit` refuses with the planner's figures (no dry run) a layout the planner puts beyond this many times the
usable memory: the planner agrees with the dry run within 10% per category, so the verdict cannot change."""
from .run import DryRunResult, dry_run


def near_enough_for_a_dry_run(run: RunConfig, gpu_name: str, num_gpus: int) -> bool:
    """The layout divides and the planner puts it within DRY_RUN_BEYOND x the usable memory."""
    from gpt3d.planner.cli import config_layout
    from gpt3d.planner.fit_advice import layout_memory
    from gpt3d.planner.layout import divisibility_problems
    try:
        gpu = get_gpu(gpu_name)
    except ValueError:
        return False
    layout = config_layout(run, num_gpus)
    seq = run.train.seq_len or run.model.seq_len
    if divisibility_problems(run.model, layout, num_gpus, run.train.global_batch_size, seq,
                             check_layers=run.parallel.pipeline_split is None):
        return False
    total = layout_memory(run.model, layout, run.train.global_batch_size, seq, run.train.dtype).total
    return total <= DRY_RUN_BEYOND * usable_bytes(gpu)


def describe_peak(result: DryRunResult, nccl: float) -> str:
    at = result.peak.at_peak
    parts = ", ".join(f"{k} {at[k] / GiB:.1f}" for k in (*COMPARED, "temporaries")
                      if k != "deferred_w" or at[k])  # zero-bubble schedules only
    return f"{(result.peak.total + nccl) / GiB:.1f} GiB per GPU ({parts}, nccl {nccl / GiB:.1f})"


def ranks_to_check(run: RunConfig) -> list[tuple[int, str]]:
    """(rank, what it is): the first pipeline stage, the most loaded under GPipe and (interleaved) 1F1B (it holds the
    most micro-batches); with a zero-bubble schedule also the last, whose deferred weight-gradient steps keep the most
    (benchmarks/dryrun.py)."""
    from gpt3d.parallel.context import Layout
    par = run.parallel
    ranks = [(0, "rank 0 (first pipeline stage)")]
    if par.schedule in ("zbh1", "zbv") and par.pp > 1:
        last = Layout(par.tp, par.pp, par.dp, par.vp).rank_of(0, 0, par.pp - 1)
        ranks.append((last, f"rank {last} (last pipeline stage)"))
    return ranks


def check_fits_by_dry_run(run: RunConfig, gpu_name: str) -> str:
    """Dry-run the most loaded ranks of `run` (parallel.dp set; `ranks_to_check`); a one-line summary when they fit,
    else LayoutError with the dry run's figures and the smallest changes that fit."""
    from .cli import smallest_fixes
    gpu = get_gpu(gpu_name)
    par = run.parallel
    capacity = usable_bytes(gpu)
    checked = []
    for rank, what in ranks_to_check(run):
        result = dry_run(run, par.tp * par.pp * par.dp, rank)
        nccl = compare(run, result, par.dp).nccl
        summary = describe_peak(result, nccl)
        if result.peak.total + nccl <= capacity:
            checked.append(f"{summary} (dry run of {what})")
            continue
        temporaries = result.peak.at_peak["temporaries"]
        fixes = smallest_fixes(run, par.dp, gpu, temporaries)
        raise LayoutError(f"the dry run of {what} needs {summary} but {gpu.name} has "
                          f"{gpu.memory_bytes / GiB:.0f} GiB ({capacity / GiB:.1f} GiB usable); "
                          + (f"smallest changes that fit (planner GiB, leaving {temporaries / GiB:.1f} GiB for "
                             f"temporaries): " + " or ".join(fixes) if fixes else
                             "no single change fits on this many GPUs (see gpt3d plan)"))
    return "; ".join(checked)
