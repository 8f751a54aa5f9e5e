"""`gpt3d align CONFIG --policy SFT_CKPT --reward RM_CKPT --prompts FILE.jsonl [--ptx-data PREFIX] [every gpt3d train
flag]`: PPO-ptx. The flags become config keys (train.objective=ppo, finetune.init_from, finetune.ppo.reward_model,
finetune.data, finetune.ppo.ptx_data), so a YAML file can say the same; the checkpoints, prompts and pretraining
data are checked before any rank starts, then `gpt3d train` runs (which plots reward and KL against step at the end).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt3d.train import command as train_command

from .plot import PLOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_command.add_arguments(parser)
    parser.add_argument("--policy", metavar="SFT_CKPT", help="checkpoint or run directory of the starting policy, "
                        "any layout; also the frozen reference (finetune.init_from)")
    parser.add_argument("--reward", metavar="RM_CKPT", help="reward model checkpoint, trained with `gpt3d finetune "
                        "--objective reward`; frozen (finetune.ppo.reward_model)")
    parser.add_argument("--prompts", metavar="FILE.jsonl", help='{"prompt": ...} lines (finetune.data)')
    parser.add_argument("--ptx-data", metavar="PREFIX", help="pretraining data of the ptx term, an indexed dataset "
                        "from `gpt3d preprocess` (finetune.ppo.ptx_data; set finetune.ppo.ptx_coef too)")


def to_overrides(args: argparse.Namespace) -> None:
    args.overrides.insert(0, "train.objective=ppo")
    for value, key in ((args.policy, "finetune.init_from"), (args.reward, "finetune.ppo.reward_model"),
                       (args.prompts, "finetune.data"), (args.ptx_data, "finetune.ppo.ptx_data")):
        if value is not None:
            args.overrides.append(f"{key}={value}")


def check_reward_model(cfg) -> None:
    """The reward model has its head, the policy's vocabulary, room for the sequences, and fits the layout."""
    from gpt3d.checkpoint.errors import CheckpointError
    from gpt3d.config.finetune import REWARD_HEAD
    from gpt3d.finetune.weights import open_checkpoint
    from gpt3d.inference.loading import check_inference_layout
    path = cfg.finetune.ppo.reward_model
    ckpt = open_checkpoint(path)
    rm = ckpt.model_config()
    ckpt.verify()
    ckpt.close()
    if REWARD_HEAD not in rm.task_heads:
        raise CheckpointError(f"--reward {path}: not a reward model (its model.task_heads are "
                              f"{rm.task_heads or 'none'}); train one with `gpt3d finetune --objective reward`")
    if rm.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(f"--reward {path}: vocabulary: reward model vocab_size={rm.vocab_size}, policy "
                              f"model.vocab_size={cfg.model.vocab_size}; both must use the same tokenizer")
    if rm.seq_len < cfg.train.seq_len:
        raise CheckpointError(f"--reward {path}: its context model.seq_len={rm.seq_len} is shorter than "
                              f"train.seq_len={cfg.train.seq_len}; lower train.seq_len")
    check_inference_layout(rm, cfg.parallel.tp, cfg.parallel.pp)


def check(args: argparse.Namespace) -> None:
    """Everything an alignment run needs, checked in this process (errors name the file, line or tensor)."""
    from gpt3d.config.base import ConfigError
    from gpt3d.finetune.weights import check_init_checkpoint

    from .data import build_pretraining, build_prompts, ptx_batch_size
    cfg = train_command.config_from_args(args)
    ppo = cfg.finetune.ppo
    fresh = check_init_checkpoint(cfg.finetune.init_from, cfg.model, "--policy")
    if fresh:
        print(f"gpt3d align: {cfg.finetune.init_from} has no {', '.join(fresh)}: initialised fresh "
              f"(seed {cfg.train.seed})", flush=True)
    if ppo.reference is not None:
        check_init_checkpoint(ppo.reference, cfg.model, "finetune.ppo.reference")
    check_reward_model(cfg)
    prompts = build_prompts(cfg)["train"]
    note = f", {prompts.truncated} cut from the left to fit" if prompts.truncated else ""
    print(f"gpt3d align: {prompts.examples} prompts{note}; {ppo.max_new_tokens} new tokens per rollout, "
          f"{ppo.epochs} PPO epochs per step", flush=True)
    if ppo.ptx_coef > 0:
        size, per_rank = ptx_batch_size(cfg), cfg.train.micro_batch_size * (cfg.parallel.dp or 1)
        if size % per_rank:
            raise ConfigError(f"finetune.ppo.ptx_batch_size: {size} pretraining sequences do not split into "
                              f"micro-batches of {cfg.train.micro_batch_size} on {cfg.parallel.dp or 1} data-parallel "
                              f"ranks; use a multiple of {per_rank}")
        build_pretraining(cfg)


def run(args: argparse.Namespace) -> int:
    from gpt3d.checkpoint.errors import CheckpointError
    from gpt3d.config.base import ConfigError
    from gpt3d.parallel.context import LayoutError
    to_overrides(args)
    try:
        check(args)
    except (ConfigError, CheckpointError, LayoutError, ValueError, FileNotFoundError) as exc:
        print(f"gpt3d align: error: {exc}", file=sys.stderr)
        return 2
    code = train_command.run(args)
    plot = (Path(args.out) if args.out else train_command.default_run_dir(args.config)) / PLOT
    if code == 0 and plot.exists():
        print(f"gpt3d align: reward and KL against step: {plot}", flush=True)
    return code
