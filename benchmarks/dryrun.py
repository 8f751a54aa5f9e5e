"""The 175B preset on 1024 A100-80GB: `gpt3d dryrun` peak memory per pipeline stage next to the planner's figures, at
the preset's layout (configs/gpt3-175b.yaml: tp8 pp16 dp8, sequence parallel, selective recomputation, distributed
optimizer) and at the planner's best layout for 1024 A100-80GB (its top-ranked one, found here by `gpt3d plan`).

    python benchmarks/dryrun.py                 # stages 0, p/2 and p-1 of both layouts
    python benchmarks/dryrun.py --all-stages    # every stage (about half a minute per stage on 2 cores)

Prints GiB per category (each category's own peak), the rank's peak (all tensors + NCCL's buffers) and the planner's
total, with planner / dry-run ratios. The baseline is the dry run measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt3d.config import load_config  # noqa: E402
from gpt3d.dryrun.compare import COMPARED, compare  # noqa: E402
from gpt3d.dryrun.run import dry_run  # noqa: E402
from gpt3d.parallel.context import Layout  # noqa: E402
from gpt3d.planner.hardware import GiB, get_gpu  # noqa: E402
from gpt3d.planner.memory import usable_bytes  # noqa: E402
from gpt3d.planner.performance import PerformanceOptions  # noqa: E402
from gpt3d.planner.search import plan  # noqa: E402

GPUS, GPU = 1024, "a100-80gb"


def best_layout_overrides(cfg) -> tuple[str, list[str]]:
    result = plan(cfg.model, get_gpu(GPU), GPUS, cfg.train.global_batch_size, cfg.train.seq_len, 1,
                  PerformanceOptions(dtype=cfg.train.dtype))
    lay = result.ranked[0].layout
    return lay.label(), [f"parallel.tp={lay.tp}", f"parallel.pp={lay.pp}", f"parallel.dp={lay.dp}",
                         f"parallel.vp={lay.vp}", f"train.micro_batch_size={lay.micro_batch}",
                         f"parallel.sequence_parallel={str(lay.sequence_parallel).lower()}",
                         f"parallel.recompute={lay.recompute}",
                         f"parallel.distributed_optimizer={str(lay.distributed_optimizer).lower()}",
                         f"parallel.schedule={lay.schedule}"]


def report(title: str, cfg, stages: list[int]) -> None:
    par = cfg.parallel
    layout = Layout(par.tp, par.pp, par.dp, par.vp)
    capacity = usable_bytes(get_gpu(GPU))
    print(f"\n{title} ({GPU}: {capacity / GiB:.1f} GiB usable); GiB; planner/dry in brackets")
    print(f"{'stage':>5} " + " ".join(f"{c:>18}" for c in (*COMPARED, "temporaries")) +
          f" {'peak+nccl':>10} {'planner':>8} {'fits':>5} {'s':>5}")
    for stage in stages:
        r = dry_run(cfg, layout.world_size, layout.rank_of(0, 0, stage))
        c = compare(cfg, r, par.dp)
        cells = [f"{c.dry[k] / GiB:8.2f} [{(c.planned[k] / c.dry[k]) if c.dry[k] else float('nan'):5.3f}]"
                 for k in COMPARED]
        total = r.peak.total + c.nccl
        print(f"{stage:>5} " + " ".join(f"{x:>18}" for x in cells) + f" {c.dry['temporaries'] / GiB:18.2f}"
              f" {total / GiB:10.2f} {(c.planned_peak + c.nccl) / GiB:8.2f}"
              f" {'yes' if total <= capacity else 'NO':>5} {r.seconds:5.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-stages", action="store_true")
    args = parser.parse_args()
    preset = load_config("gpt3-175b", ["parallel.dp=8"])
    pp = preset.parallel.pp
    stages = list(range(pp)) if args.all_stages else [0, pp // 2, pp - 1]
    report("175B preset layout tp8 pp16 dp8 vp1 mb1 sp rc=selective dopt", preset, stages)
    label, overrides = best_layout_overrides(preset)
    best = load_config("gpt3-175b", overrides)
    report(f"175B at the planner's best layout on {GPUS} x {GPU}: {label}", best,
           list(range(best.parallel.pp)) if args.all_stages else [0, best.parallel.pp // 2, best.parallel.pp - 1])


if __name__ == "__main__":
    main()
