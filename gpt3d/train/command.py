"""`gpt3d train`: validate everything, then train in this process, join a launcher's job, or spawn local ranks."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from gpt3d.config.base import ConfigError
from gpt3d.config.run import RunConfig, load_config

LAYOUT_FLAGS = {"tp": "parallel.tp", "pp": "parallel.pp", "dp": "parallel.dp", "vp": "parallel.vp",
                "micro_batch": "train.micro_batch_size", "steps": "train.steps"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file, a name from configs/ (e.g. tiny), or a preset via --set preset=NAME")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.n_layers=4 (repeatable)")
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory's results")
    for flag in ("tp", "pp", "dp", "vp"):
        parser.add_argument(f"--{flag}", type=int, help=f"{flag} degree (same as --set {LAYOUT_FLAGS[flag]}=N)")
    parser.add_argument("--micro-batch", type=int, help="micro-batch size (train.micro_batch_size)")
    parser.add_argument("--steps", type=int, help="optimizer steps (train.steps)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    for attr, key in LAYOUT_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(args.config, overrides)


def default_run_dir(config: str) -> Path:
    return Path("runs") / Path(config).stem


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished or running run unless --overwrite; never delete anything else."""
    existing = [name for name in ("metrics.jsonl", "config.yaml", "tensorboard") if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"--out: run directory {run_dir} already holds {', '.join(existing)}; pass --overwrite to "
                          f"replace them or choose another --out")
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _spawned_rank(rank: int, world_size: int, cfg: RunConfig, run_dir: str) -> None:
    from .loop import train_rank
    train_rank(cfg, run_dir, rank, world_size, rank, world_size)


def run(args: argparse.Namespace) -> int:
    from gpt3d.launch.env import discover_launch, export_torch_env
    from gpt3d.parallel.context import LayoutError

    from .loop import build_data, train_rank
    from .runtime import check_layout

    try:
        cfg = config_from_args(args)
        launch = discover_launch()
        if launch is not None:
            world_size = launch.world_size
        else:
            dp = cfg.parallel.dp or 1
            world_size = cfg.parallel.tp * cfg.parallel.pp * dp
        check_layout(cfg, world_size)
        run_dir = Path(args.out) if args.out else default_run_dir(args.config)
        if launch is None or launch.rank == 0:
            prepare_run_dir(run_dir, args.overwrite)
        if launch is None:
            build_data(cfg)  # data errors surface here, before any rank starts; builds the default corpus once
    except (ConfigError, LayoutError, ValueError, FileNotFoundError) as exc:
        print(f"gpt3d train: error: {exc}", file=sys.stderr)
        return 2

    if launch is not None:
        export_torch_env(launch)
        train_rank(cfg, str(run_dir), launch.rank, launch.world_size, launch.local_rank, launch.local_world_size)
    elif world_size == 1:
        train_rank(cfg, str(run_dir), 0, 1, 0, 1)
    else:
        from gpt3d.launch.spawn import spawn
        print(f"gpt3d: starting {world_size} local ranks (tp={cfg.parallel.tp} pp={cfg.parallel.pp} "
              f"dp={world_size // (cfg.parallel.tp * cfg.parallel.pp)} vp={cfg.parallel.vp})", flush=True)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        spawn(_spawned_rank, world_size, cfg, str(run_dir))
    print(f"gpt3d: run directory {run_dir} (metrics.jsonl, config.yaml, tensorboard/)")
    return 0
