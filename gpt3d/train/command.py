"""`gpt3d train`: validate everything, then train in this process, join a launcher's job, or spawn local ranks."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from gpt3d.config.base import ConfigError
from gpt3d.config.run import RunConfig, load_config

CHECKPOINTS = "checkpoints"

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
    parser.add_argument("--save-interval", type=int, metavar="N",
                        help="checkpoint into RUN/checkpoints every N steps (checkpoint.save_interval)")
    parser.add_argument("--resume", metavar="auto|none|PATH",
                        help="auto (default): continue from the run directory's newest complete checkpoint; none: "
                             "start fresh; PATH: a checkpoint or run directory, in any layout (checkpoint.resume)")
    parser.add_argument("--reset-optimizer", action="store_true",
                        help="resume from a checkpoint that lacks Adam moments, starting them fresh "
                             "(checkpoint.reset_optimizer)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    for attr, key in LAYOUT_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    if getattr(args, "save_interval", None) is not None:
        cfg.checkpoint.save_interval = args.save_interval
    if getattr(args, "resume", None) is not None:
        cfg.checkpoint.resume = args.resume
    if getattr(args, "reset_optimizer", False):
        cfg.checkpoint.reset_optimizer = True
    cfg.checkpoint.__post_init__()
    return cfg


def default_run_dir(config: str) -> Path:
    return Path("runs") / Path(config).stem


def prepare_run_dir(run_dir: Path, overwrite: bool, resume_step: Optional[int] = None) -> None:
    """Refuse to clobber a finished or running run unless --overwrite; never delete anything else. When resuming
    from a checkpoint at `resume_step`, the run continues: metrics past that step (from the attempt that was
    interrupted) are dropped, the rest is kept and appended to."""
    if resume_step is not None:
        truncate_metrics(run_dir / "metrics.jsonl", resume_step)
        return
    existing = [name for name in ("metrics.jsonl", "config.yaml", "tensorboard", CHECKPOINTS)
                if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"--out: run directory {run_dir} already holds {', '.join(existing)}; pass --overwrite to "
                          f"replace them or choose another --out")
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def drop_newer_checkpoints(run_dir: Path, step: int, overwrite: bool) -> None:
    """Resuming at `step` a run that has newer checkpoints replaces its later history (the next saves and the
    auto-resume after them would mix both): only with --overwrite, which then drops them first."""
    from gpt3d.checkpoint.store import complete_checkpoints, delete_checkpoint
    newer = [path for s, path in complete_checkpoints(run_dir / CHECKPOINTS) if s > step]
    if newer and not overwrite:
        raise ConfigError(f"--resume: the checkpoint is at step {step} but {run_dir} has newer checkpoints "
                          f"({', '.join(p.name for p in newer)}); pass --overwrite to continue from step {step} and "
                          f"drop them (and the metrics after step {step}), or choose another --out to branch the run")
    for path in newer:
        delete_checkpoint(path)


def written(run_dir: Path) -> str:
    """What the run wrote, as it is on disk (TensorBoard only when train.tensorboard was on)."""
    names = [n + ("/" if (run_dir / n).is_dir() else "") for n in ("metrics.jsonl", "config.yaml", "tensorboard",
                                                                  CHECKPOINTS) if (run_dir / n).exists()]
    return ", ".join(names) or "nothing written"


def check_writable(run_dir: Path) -> None:
    """Create the run directory and write a probe file in it, so a read-only or missing --out is one line before any
    rank starts (raises the OSError)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    probe = run_dir / f".gpt3d-write-probe-{os.getpid()}"
    with open(probe, "w") as fh:
        fh.write("ok")
    probe.unlink()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of steps <= `step` (atomically: a crash here loses nothing)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def checkpoint_to_resume(cfg: RunConfig, run_dir: Path, overwrite: bool) -> Optional[Path]:
    """The checkpoint this run continues from, fully checked against the config (metadata, files, checksums,
    shapes) before any rank starts; None for a fresh start (--overwrite starts fresh unless --resume PATH)."""
    from gpt3d.checkpoint import Checkpoint, check_compatible, resume_path
    if overwrite and cfg.checkpoint.resume == "auto":
        return None
    path = resume_path(cfg.checkpoint.resume, run_dir)
    if path is None:
        return None
    ckpt = Checkpoint(path)
    check_compatible(ckpt, cfg)
    ckpt.verify()
    return path


def _spawned_rank(rank: int, world_size: int, cfg: RunConfig, run_dir: str) -> None:
    from .loop import train_rank
    train_rank(cfg, run_dir, rank, world_size, rank, world_size)


def run(args: argparse.Namespace) -> int:
    from gpt3d.launch.env import discover_launch, export_torch_env
    from gpt3d.parallel.context import LayoutError

    from .loop import build_data, train_rank
    from .precision import compute_dtype, require_dtype_runs
    from .runtime import check_layout

    try:
        cfg = config_from_args(args)
        launch = discover_launch()
        if launch is not None:
            world_size = launch.world_size
        else:
            dp = cfg.parallel.dp or 1
            world_size = cfg.parallel.tp * cfg.parallel.pp * dp
        layout, num_micro = check_layout(cfg, world_size)
        import torch
        if cfg.train.device == "cpu" or not torch.cuda.is_available():  # GPUs: each rank checks its own (Trainer)
            require_dtype_runs(cfg.train.dtype, compute_dtype(cfg.train.dtype), torch.device("cpu"))
        run_dir = Path(args.out) if args.out else default_run_dir(args.config)
        if launch is None or launch.rank == 0:
            if cfg.train.objective != "pretrain" and cfg.finetune.init_from is not None:
                from gpt3d.finetune.weights import check_init_checkpoint  # fine-tuning's starting weights
                check_init_checkpoint(cfg.finetune.init_from, cfg.model)
            if cfg.train.objective == "ppo":
                from gpt3d.align.command import check_reward_model  # PPO's frozen reward model
                check_reward_model(cfg)
            from .machine_fit import check_machine_fits
            check_machine_fits(cfg, layout, num_micro, world_size if launch is None else launch.local_world_size)
            checkpoint = checkpoint_to_resume(cfg, run_dir, args.overwrite)
            if checkpoint is None and cfg.checkpoint.resume == "auto":
                cfg.checkpoint.resume = "none"  # --overwrite: do not pick up the checkpoints about to be removed
            resume_step = None
            if checkpoint is not None:
                from gpt3d.checkpoint import Checkpoint
                resume_step = Checkpoint(checkpoint).step
                drop_newer_checkpoints(run_dir, resume_step, args.overwrite)
                cfg.checkpoint.resume = str(checkpoint)  # every rank loads exactly the checkpoint checked here
            prepare_run_dir(run_dir, args.overwrite, resume_step)
            check_writable(run_dir)
        elif args.overwrite and cfg.checkpoint.resume == "auto":
            cfg.checkpoint.resume = "none"  # rank 0 removes the old checkpoints
        if launch is None:
            build_data(cfg)  # data errors surface here, before any rank starts; builds the default corpus once
    except (ConfigError, LayoutError, ValueError) as exc:
        print(f"gpt3d train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        from gpt3d.oserror import os_error_line
        print(f"gpt3d train: error: {os_error_line(exc)}", file=sys.stderr)
        return 2

    if launch is not None:
        export_torch_env(launch)
        train_rank(cfg, str(run_dir), launch.rank, launch.world_size, launch.local_rank, launch.local_world_size)
        if launch.rank == 0:
            print(f"gpt3d: run directory {run_dir} ({written(run_dir)})", flush=True)
        from gpt3d.launch.spawn import leave_job
        leave_job()
    elif world_size == 1:
        train_rank(cfg, str(run_dir), 0, 1, 0, 1)
    else:
        from gpt3d.launch.spawn import spawn
        print(f"gpt3d: starting {world_size} local ranks (tp={cfg.parallel.tp} pp={cfg.parallel.pp} "
              f"dp={world_size // (cfg.parallel.tp * cfg.parallel.pp)} vp={cfg.parallel.vp})", flush=True)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from gpt3d.launch.spawn import RankFailed
        try:
            spawn(_spawned_rank, world_size, cfg, str(run_dir))
        except RankFailed as exc:  # a dead rank is one line, not the launcher's traceback
            print(f"gpt3d train: error: {exc}", file=sys.stderr)
            return exc.exit_status
    print(f"gpt3d: run directory {run_dir} ({written(run_dir)})")
    return 0
