"""`gpt3d finetune CONFIG --from CKPT --data FILE.jsonl --objective sft|classify|reward|dpo [every gpt3d train flag]`.

The flags become config keys (train.objective, finetune.data, finetune.init_from), so a YAML file can say the same;
the data file and the starting checkpoint are checked before any rank starts, then `gpt3d train` runs.
"""
from __future__ import annotations

import argparse
import sys

from gpt3d.config.finetune import OBJECTIVES
from gpt3d.train import command as train_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_command.add_arguments(parser)
    parser.add_argument("--from", dest="init_from", metavar="CKPT",
                        help="checkpoint or run directory to start from, any layout (finetune.init_from); heads it "
                             "lacks start fresh")
    parser.add_argument("--data", metavar="FILE.jsonl", help="the examples (finetune.data)")
    parser.add_argument("--objective", choices=[o for o in OBJECTIVES if o != "pretrain"],
                        help="train.objective (default: the config's)")


def to_overrides(args: argparse.Namespace) -> None:
    for value, key in ((args.objective, "train.objective"), (args.data, "finetune.data"),
                       (args.init_from, "finetune.init_from")):
        if value is not None:
            args.overrides.append(f"{key}={value}")


def check(args: argparse.Namespace) -> None:
    """Everything a fine-tuning run needs, checked in this process (errors name the line, tensor or key)."""
    from gpt3d.config.base import ConfigError
    from gpt3d.train.loop import build_data

    from .weights import check_init_checkpoint
    cfg = train_command.config_from_args(args)
    if cfg.train.objective == "pretrain":
        raise ConfigError("train.objective: pretrain is `gpt3d train`; pass --objective sft|classify|reward|dpo")
    if cfg.finetune.init_from is not None:
        fresh = check_init_checkpoint(cfg.finetune.init_from, cfg.model)
        if fresh:
            print(f"gpt3d finetune: {cfg.finetune.init_from} has no {', '.join(fresh)}: initialised fresh "
                  f"(seed {cfg.train.seed})", flush=True)
    data = build_data(cfg)["train"]
    note = f", {data.truncated} truncated to train.seq_len={cfg.train.seq_len}" if data.truncated else ""
    print(f"gpt3d finetune: {cfg.train.objective}: {data.examples} examples in {len(data)} packed rows of "
          f"{cfg.train.seq_len} tokens{note}", flush=True)


def run(args: argparse.Namespace) -> int:
    from gpt3d.checkpoint.errors import CheckpointError
    from gpt3d.config.base import ConfigError
    to_overrides(args)
    try:
        check(args)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"gpt3d finetune: error: {exc}", file=sys.stderr)
        return 2
    return train_command.run(args)
