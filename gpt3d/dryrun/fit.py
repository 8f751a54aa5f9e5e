"""The fit check `gpt3d submit` runs: the dry run of the first pipeline stage (the most loaded: it holds p
micro-batches in flight) against the GPU, refusing with the dry run's per-category figures and the smallest changes
that fit."""
from __future__ import annotations

from gpt3d.config.run import RunConfig
from gpt3d.planner.hardware import GiB, get_gpu
from gpt3d.planner.memory import LayoutError, usable_bytes

from .compare import COMPARED, compare
from .run import DryRunResult, dry_run


def describe_peak(result: DryRunResult, nccl: float) -> str:
    at = result.peak.at_peak
    parts = ", ".join(f"{k} {at[k] / GiB:.1f}" for k in (*COMPARED, "temporaries"))
    return f"{(result.peak.total + nccl) / GiB:.1f} GiB per GPU ({parts}, nccl {nccl / GiB:.1f})"


def check_fits_by_dry_run(run: RunConfig, gpu_name: str) -> str:
    """Dry-run rank 0 of `run` (parallel.dp set); a one-line summary when it fits, else LayoutError with the dry run's
    figures and the smallest changes that fit."""
    from .cli import smallest_fixes
    gpu = get_gpu(gpu_name)
    par = run.parallel
    result = dry_run(run, par.tp * par.pp * par.dp, 0)
    nccl = compare(run, result, par.dp).nccl
    capacity = usable_bytes(gpu)
    summary = describe_peak(result, nccl)
    if result.peak.total + nccl <= capacity:
        return f"dry run of rank 0 fits {gpu.name}: {summary}"
    fixes = smallest_fixes(run, par.dp, gpu)
    raise LayoutError(f"the dry run of rank 0 (first pipeline stage) needs {summary} but {gpu.name} has "
                      f"{gpu.memory_bytes / GiB:.0f} GiB ({capacity / GiB:.1f} GiB usable); "
                      + ("smallest changes that fit: " + " or ".join(fixes) if fixes else
                         "no single change fits on this many GPUs (see gpt3d plan)"))
