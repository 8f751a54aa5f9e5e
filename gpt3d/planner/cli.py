"""`gpt3d plan CONFIG --gpus N --gpu a100-80gb ...`: argument parsing and the command (the lead wires it into the
gpt3d CLI with `add_arguments(subparser)` and `run(args)`)."""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console

from gpt3d.config import PRESETS, ConfigError, load_config
from gpt3d.config.run import RunConfig

from .evaluate import describe_evaluation, evaluate_layout
from .hardware import GPUS, get_gpu
from .layout import Layout, parse_layout
from .memory import LayoutError
from .performance import PerformanceOptions
from .report import plan_to_dict, render
from .schedule_gains import render_schedule_gains, schedule_gains
from .search import plan

DEFAULT_TOP = 5
DEFAULT_GPUS_PER_NODE = 8
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML config path, a name in configs/ (e.g. gpt3-175b) or a preset name")
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs in the cluster")
    parser.add_argument("--gpu", required=True, help=f"GPU type: {', '.join(GPUS)}")
    parser.add_argument("--gpus-per-node", type=int, default=DEFAULT_GPUS_PER_NODE,
                        help="GPUs per node sharing NVLink (default 8)")
    parser.add_argument("--global-batch", type=int, default=None,
                        help="sequences per step (default: the config's train.global_batch_size)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default: train.seq_len)")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="how many layouts to show (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--layout", default=None, metavar="tp=8,pp=12,dp=4,vp=1,mb=1,sp=0,recompute=full",
                        help="evaluate this one layout (keys tp pp dp vp mb sp recompute dopt schedule; unset keys "
                             "keep the config's values) instead of searching")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set model.n_layers=48")


def _load(name: str, overrides: list[str]) -> RunConfig:
    """A config file (path or configs/ name), else a preset of that name."""
    try:
        return load_config(name, overrides)
    except ConfigError:
        if name in PRESETS:
            return load_config(None, [f"preset={name}", *overrides])
        raise


def run(args: argparse.Namespace) -> int:
    """Run the planner; 0 on success, 2 with one clear message on stderr for bad input."""
    try:
        gpu = get_gpu(args.gpu)
        if args.gpus < 1:
            raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
        if args.gpus_per_node < 1:
            raise ValueError(f"--gpus-per-node must be >= 1, got {args.gpus_per_node}")
        if args.top < 1:
            raise ValueError(f"--top must be >= 1, got {args.top}")
        config = _load(args.config, args.overrides)
        global_batch = args.global_batch if args.global_batch is not None else config.train.global_batch_size
        seq_len = args.seq if args.seq is not None else config.train.seq_len
        dtype = config.train.dtype if config.train.dtype != "fp32" else "bf16"  # GPUs train in mixed precision
        options = PerformanceOptions(gpus_per_node=args.gpus_per_node,
                                     overlap_grad_reduce=config.parallel.overlap_grad_reduce,
                                     bucket_bytes=config.parallel.bucket_mb * 1e6, dtype=dtype)
        if args.layout is not None:
            return _evaluate(args, config, gpu, global_batch, seq_len, options)
        result = plan(config.model, gpu, args.gpus, global_batch, seq_len, args.top, options)
    except (ConfigError, LayoutError, ValueError) as exc:
        print(f"gpt3d plan: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    gains = schedule_gains(result, options)
    if args.json:
        print(json.dumps({**plan_to_dict(result), "schedule_gains": gains}, indent=2))
    else:
        console = Console(file=sys.stdout, width=220)
        render(result, console)
        render_schedule_gains(result, gains, console)
    return 0


def config_layout(config: RunConfig, num_gpus: int) -> Layout:
    """The layout the config asks for (dp from the GPU count when unset)."""
    par, train = config.parallel, config.train
    dp = par.dp if par.dp is not None else max(1, num_gpus // (par.tp * par.pp))
    return Layout(tp=par.tp, pp=par.pp, dp=dp, vp=par.vp, micro_batch=train.micro_batch_size,
                  sequence_parallel=par.sequence_parallel and par.tp > 1, recompute=par.recompute,
                  distributed_optimizer=par.distributed_optimizer,
                  schedule="1f1b" if par.schedule == "interleaved" else par.schedule)  # the planner's interleaving


def _evaluate(args: argparse.Namespace, config: RunConfig, gpu, global_batch: int, seq_len: int,
              options: PerformanceOptions) -> int:
    layout = parse_layout(args.layout, args.gpus, config_layout(config, args.gpus))
    evaluation = evaluate_layout(config.model, layout, gpu, args.gpus, global_batch, seq_len, options)
    if args.json:
        print(json.dumps({"layout": layout.to_dict(), "fits": evaluation.fits, "capacity": evaluation.capacity,
                          "fixes": evaluation.fixes, "prediction": evaluation.prediction.to_dict()}, indent=2))
    else:
        print(describe_evaluation(evaluation, gpu))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (python -m gpt3d.planner.cli) until `gpt3d plan` is wired."""
    parser = argparse.ArgumentParser(prog="gpt3d plan", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
