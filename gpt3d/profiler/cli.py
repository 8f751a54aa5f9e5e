"""`gpt3d profile`: validate everything, then profile in this process, join a launcher's job, or spawn local ranks."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gpt3d.config.base import ConfigError
from gpt3d.config.run import RunConfig, load_config

from .session import ProfileOptions

LAYOUT_FLAGS = {"tp": "parallel.tp", "pp": "parallel.pp", "dp": "parallel.dp", "vp": "parallel.vp",
                "micro_batch": "train.micro_batch_size"}
OUTPUT_FILES = ("profile.json", "profile.csv", "profile.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file, a name from configs/ (e.g. tiny), or a preset via --set preset=NAME")
    for flag in ("tp", "pp", "dp", "vp"):
        parser.add_argument(f"--{flag}", type=int, help=f"{flag} degree (same as --set {LAYOUT_FLAGS[flag]}=N)")
    parser.add_argument("--micro-batch", type=int, help="micro-batch size (train.micro_batch_size)")
    parser.add_argument("--steps", type=int, default=6, help="training steps to run, warm-up included (default 6)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps not measured (default 2)")
    parser.add_argument("--out", help="directory for profile.json/.csv/.png (default: runs/<config name>-profile)")
    parser.add_argument("--overwrite", action="store_true", help="replace a profile already in --out")
    parser.add_argument("--peak-tflops", type=float,
                        help="peak TFLOP/s of one device for MFU (default: A100/H100 bf16 datasheet; on CPU the hardware "
                             "peak: cores x clock x FLOPs/cycle of the ISA and dtype, gpt3d/profiler/cpu_peak.py)")
    parser.add_argument("--trace", action="store_true",
                        help="also run one step under torch.profiler and write trace_rank<R>.json (Chrome trace)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.n_layers=4 (repeatable)")


def options_from_args(args: argparse.Namespace, out_dir: Path) -> ProfileOptions:
    return ProfileOptions(steps=args.steps, warmup=args.warmup, out_dir=str(out_dir), peak_tflops=args.peak_tflops,
                          trace=args.trace, config_name=Path(args.config).stem)


def config_from_args(args: argparse.Namespace, options: ProfileOptions) -> RunConfig:
    overrides = list(args.overrides)
    for attr, key in LAYOUT_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    # The profile runs exactly these steps, without evaluation, TensorBoard or a progress bar.
    overrides += [f"train.steps={options.total_steps}", "train.eval_interval=0", "train.tensorboard=false",
                  "train.progress=false"]
    return load_config(args.config, overrides)


def default_out_dir(config: str) -> Path:
    return Path("runs") / f"{Path(config).stem}-profile"


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an earlier profile unless --overwrite; touches nothing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out: {out_dir} exists and is not a directory; choose another --out")
    existing = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"--out: {out_dir} already holds {', '.join(existing)}; pass --overwrite to replace them or "
                          f"choose another --out")


def _spawned_rank(rank: int, world_size: int, cfg: RunConfig, options: ProfileOptions) -> None:
    from .session import profile_rank
    profile_rank(cfg, options, rank, world_size, rank, world_size)


def run(args: argparse.Namespace) -> int:
    from gpt3d.launch.env import LaunchError, discover_launch, export_torch_env
    from gpt3d.parallel.context import LayoutError
    from gpt3d.train.loop import build_data
    from gpt3d.train.runtime import check_layout

    from .session import profile_rank

    try:
        out_dir = Path(args.out) if args.out else default_out_dir(args.config)
        options = options_from_args(args, out_dir)
        cfg = config_from_args(args, options)
        launch = discover_launch()
        if launch is not None:
            world_size = launch.world_size
        else:
            world_size = cfg.parallel.tp * cfg.parallel.pp * (cfg.parallel.dp or 1)
        check_layout(cfg, world_size)
        if launch is None or launch.rank == 0:
            check_out_dir(out_dir, args.overwrite)
        if launch is None:
            build_data(cfg)  # data errors surface here, before any rank starts
    except (ConfigError, LayoutError, LaunchError, ValueError, FileNotFoundError) as exc:
        print(f"gpt3d profile: error: {exc}", file=sys.stderr)
        return 2

    if launch is not None:
        export_torch_env(launch)
        profile_rank(cfg, options, launch.rank, launch.world_size, launch.local_rank, launch.local_world_size)
        if launch.rank != 0:
            return 0
    elif world_size == 1:
        profile_rank(cfg, options, 0, 1, 0, 1)
    else:
        from gpt3d.launch.spawn import spawn
        print(f"gpt3d: profiling on {world_size} local ranks (tp={cfg.parallel.tp} pp={cfg.parallel.pp} "
              f"dp={world_size // (cfg.parallel.tp * cfg.parallel.pp)} vp={cfg.parallel.vp})", flush=True)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        spawn(_spawned_rank, world_size, cfg, options)
    print(f"gpt3d: profile written to {out_dir} ({', '.join(OUTPUT_FILES)})")
    return 0
