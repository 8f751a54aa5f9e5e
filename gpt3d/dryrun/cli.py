"""`gpt3d dryrun CONFIG [--tp --pp --dp --vp --micro-batch] [--rank R | --all-stages] [--gpu a100-80gb]`: one rank
of the real job, run under fake tensors, with its peak memory per category next to the GPU and the planner."""
from __future__ import annotations

import argparse
import json
import sys

from gpt3d.config import ConfigError
from gpt3d.parallel.context import Layout
from gpt3d.parallel.context import LayoutError as ContextLayoutError
from gpt3d.planner.hardware import GPUS, GiB, get_gpu
from gpt3d.planner.memory import usable_bytes

from .compare import COMPARED, compare
from .run import DryRunResult, dry_run

EXIT_BAD_INPUT = 2
EXIT_DOES_NOT_FIT = 3
DEFAULT_GPU = "a100-80gb"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML config path, a name in configs/ (e.g. gpt3-175b) or a preset name")
    parser.add_argument("--tp", type=int, default=None, help="tensor-parallel degree (default: the config's)")
    parser.add_argument("--pp", type=int, default=None, help="pipeline stages (default: the config's)")
    parser.add_argument("--dp", type=int, default=None,
                        help="data-parallel degree (default: the config's parallel.dp; required when it is unset)")
    parser.add_argument("--vp", type=int, default=None, help="virtual stages per rank (default: the config's)")
    parser.add_argument("--micro-batch", type=int, default=None, help="micro-batch size (default: the config's)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rank", type=int, default=None, help="the global rank to run (default 0: first stage)")
    which.add_argument("--all-stages", action="store_true", help="run one rank of every pipeline stage")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"GPU to compare with: {', '.join(GPUS)} (default "
                                                           f"{DEFAULT_GPU})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")


def load_run(args: argparse.Namespace):
    """The config with the command-line layout applied, and its dp."""
    from gpt3d.planner.cli import _load
    overrides = list(args.overrides)
    for flag, key in (("tp", "parallel.tp"), ("pp", "parallel.pp"), ("dp", "parallel.dp"), ("vp", "parallel.vp"),
                      ("micro_batch", "train.micro_batch_size")):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
            overrides.append(f"{key}={value}")
    cfg = _load(args.config, overrides)
    if cfg.parallel.dp is None:
        raise ValueError("the config leaves parallel.dp to the number of GPUs; pass --dp (e.g. --dp 8 for 1024 GPUs "
                         f"at tp{cfg.parallel.tp} pp{cfg.parallel.pp} = {1024 // (cfg.parallel.tp * cfg.parallel.pp)})"
                         if 1024 % (cfg.parallel.tp * cfg.parallel.pp) == 0 else
                         "the config leaves parallel.dp to the number of GPUs; pass --dp")
    return cfg, cfg.parallel.dp


def ranks_to_run(layout: Layout, rank, all_stages: bool) -> list[int]:
    if all_stages:
        return [layout.rank_of(0, 0, stage) for stage in range(layout.pp)]
    return [0 if rank is None else rank]


def smallest_fixes(cfg, dp: int, gpu, temporaries: float) -> list[str]:
    """The planner's single changes that fit (its memory model is checked against the dry run per category), leaving
    room for the temporaries this dry run measured (the planner has no temporaries category)."""
    import dataclasses

    from gpt3d.planner.cli import config_layout
    from gpt3d.planner.fit_advice import suggestions
    from gpt3d.planner.memory import USABLE_MEMORY_FRACTION
    par = cfg.parallel
    layout = config_layout(cfg, par.tp * par.pp * dp)
    seq = cfg.train.seq_len or cfg.model.seq_len
    room = dataclasses.replace(gpu, memory_bytes=int(gpu.memory_bytes - temporaries / USABLE_MEMORY_FRACTION))
    return suggestions(cfg.model, layout, layout.num_gpus, cfg.train.global_batch_size, seq, cfg.train.dtype, room,
                       gpus_per_node=8)


def fit_total(result: DryRunResult, nccl: float) -> float:
    """What the rank needs on the device: the tensors' peak plus NCCL's own buffers."""
    return result.peak.total + nccl


def render(cfg, dp: int, results: list[DryRunResult], gpu) -> str:
    par = cfg.parallel
    capacity = usable_bytes(gpu)
    lines = [f"gpt3d dryrun: {cfg.model.num_parameters(padded_vocab=True) / 1e9:.1f}B parameters, tp{par.tp} "
             f"pp{par.pp} dp{dp} vp{par.vp} mb{cfg.train.micro_batch_size} sp={int(par.sequence_parallel)} "
             f"recompute={par.recompute} dopt={int(par.distributed_optimizer)} {cfg.train.dtype}; GiB per GPU; "
             f"{gpu.name}: {gpu.memory_bytes / GiB:.0f} GiB, {capacity / GiB:.1f} usable"]
    header = f"{'rank':>5} {'stage':>5} {'':8}" + "".join(f"{c:>12}" for c in (*COMPARED, "temporaries",
                                                                                  "nccl", "peak", "fits"))
    lines.append(header)
    for r in results:
        c = compare(cfg, r, dp)
        total = fit_total(r, c.nccl)
        dry = [c.dry[k] / GiB for k in COMPARED] + [c.dry["temporaries"] / GiB, c.nccl / GiB, total / GiB]
        plan = [c.planned[k] / GiB for k in COMPARED] + [float("nan"), c.nccl / GiB,
                                                          (c.planned_peak + c.nccl) / GiB]
        lines.append(f"{r.rank:>5} {r.coords[2]:>5} {'dry run':8}" + "".join(f"{v:12.2f}" for v in dry)
                     + f"{'yes' if total <= capacity else 'NO':>12}")
        lines.append(f"{'':>5} {'':>5} {'planner':8}" + "".join(f"{v:12.2f}" if v == v else f"{'-':>12}"
                                                                  for v in plan))
        lines.append(f"{'':>5} {'':>5} {'error':8}" + "".join(f"{c.relative_error(k):+12.1%}" for k in COMPARED))
    ran = results[0]
    lines.append(f"(one training step of {ran.ran_microbatches} of the step's {ran.num_microbatches} micro-batches per "
                 f"rank: the peak is reached by then; {sum(r.seconds for r in results):.0f} s. Each category column "
                 f"is that category's own peak; 'peak' is the rank's peak of all tensors together plus nccl, NCCL's "
                 f"own buffers (a planner constant: they are not tensors))")
    return "\n".join(lines)


def to_dict(cfg, dp: int, results: list[DryRunResult], gpu) -> dict:
    out = []
    for r in results:
        c = compare(cfg, r, dp)
        out.append({"rank": r.rank, "tp_rank": r.coords[0], "dp_rank": r.coords[1], "stage": r.coords[2],
                    "at_peak": r.peak.at_peak, "category_max": r.peak.category_max, "peak": r.peak.total,
                    "nccl": c.nccl, "planner": c.planned, "fits": fit_total(r, c.nccl) <= usable_bytes(gpu),
                    "microbatches_run": r.ran_microbatches, "microbatches": r.num_microbatches,
                    "seconds": r.seconds})
    return {"gpu": gpu.name, "usable_bytes": usable_bytes(gpu), "ranks": out}


def run(args: argparse.Namespace) -> int:
    try:
        gpu = get_gpu(args.gpu)
        cfg, dp = load_run(args)
        par = cfg.parallel
        layout = Layout(par.tp, par.pp, dp, par.vp)
        ranks = ranks_to_run(layout, args.rank, args.all_stages)
        results = [dry_run(cfg, layout.world_size, rank) for rank in ranks]
    except (ConfigError, ContextLayoutError, ValueError) as exc:
        print(f"gpt3d dryrun: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(to_dict(cfg, dp, results, gpu), indent=2))
    fits = all(fit_total(r, compare(cfg, r, dp).nccl) <= usable_bytes(gpu) for r in results)
    if not args.json:
        print(render(cfg, dp, results, gpu))
        if not fits:
            temporaries = max(r.peak.at_peak["temporaries"] for r in results)
            fixes = smallest_fixes(cfg, dp, gpu, temporaries)
            print(f"does NOT fit; smallest changes that fit (planner GiB, leaving {temporaries / GiB:.1f} GiB for "
                  f"temporaries): " + (" or ".join(fixes) if fixes else "none found on this many GPUs (gpt3d plan)"))
    return 0 if fits else EXIT_DOES_NOT_FIT
