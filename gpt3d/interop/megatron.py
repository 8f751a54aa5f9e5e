"""Megatron-LM / megatron-core GPT checkpoints <-> gpt3d's full state dict.

Two formats: `legacy` (iter_%07d/mp_rank_TT[_PPP]/model_optim_rng.pt per tensor/pipeline rank, megatron-core names;
pre-core `language_model.*` names are also read) and `torch_dist` (megatron's dist_checkpointing format). Both carry
Megatron's vocabulary padding (a multiple of 128 * tp), which is cut/padded to gpt3d's on the way through.
Exports hold the model only (no optimizer or RNG state): load them in Megatron-LM with --no-load-optim --no-load-rng
(or --finetune)."""
from __future__ import annotations

import os
from typing import Literal, Mapping, Optional

import torch

from gpt3d.config.divisibility import layout_rules_broken
from gpt3d.config.model import ModelConfig

from .canonical import check_gpt3d_state_dict, fit_vocab, fit_vocab_rows, gpt3d_shapes
from .errors import InteropError
from .megatron_args import megatron_padded_vocab, model_config_from_args
from .megatron_dist import is_dist, read_common, read_dist, write_dist
from .megatron_files import claim_directory, find_iteration_dir, iteration_dir_name, write_tracker
from .megatron_legacy import read_legacy, write_legacy

FORMATS = ("legacy", "torch_dist")


def _check_layout(cfg: ModelConfig, tp: int, pp: int, iteration: int, fmt: str) -> None:
    problems = []
    if fmt not in FORMATS:
        problems.append(f"fmt={fmt!r} is not one of {FORMATS}")
    if not (isinstance(tp, int) and tp >= 1 and isinstance(pp, int) and pp >= 1):
        problems.append(f"tp={tp!r} and pp={pp!r} must be positive integers")
    else:
        messages = {"n_heads": f"tp={tp} does not divide n_heads={cfg.n_heads} (Megatron shards whole heads)",
                    "d_ff": f"tp={tp} does not divide d_ff={cfg.d_ff}",
                    "n_layers": f"pp={pp} does not divide n_layers={cfg.n_layers}"}
        # (no vocabulary rule: Megatron pads the vocabulary to a multiple of 128 * tp itself)
        problems += [messages[rule] for rule in layout_rules_broken(cfg, tp, pp) if rule in messages]
    if not (isinstance(iteration, int) and iteration >= 0):
        problems.append(f"iteration={iteration!r} must be a non-negative integer")
    if cfg.attention_pattern != "dense":
        problems.append(f"attention_pattern={cfg.attention_pattern!r} (Megatron's GPT has no block-sparse layers)")
    if problems:
        raise InteropError(f"save_megatron: {'; '.join(problems)}; pick a layout that fits the model")


def save_megatron(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, directory: str, tp: int = 1, pp: int = 1,
                  iteration: int = 0, fmt: Literal["legacy", "torch_dist"] = "legacy",
                  overwrite: bool = False) -> None:
    """Write gpt3d's full state dict as a Megatron checkpoint of `iteration` for tensor/pipeline degrees tp/pp
    (torch_dist stores global tensors, so tp only sets the vocabulary padding there), then the tracker file
    latest_checkpointed_iteration.txt. Everything is validated before anything is written."""
    _check_layout(cfg, tp, pp, iteration, fmt)
    check_gpt3d_state_dict(sd, cfg, "save_megatron")
    claim_directory(directory, overwrite)
    rows = megatron_padded_vocab(cfg.vocab_size, tp)
    padded = dict(sd)
    for name in ("embed.tok.weight", "head.weight"):
        if name in padded:
            padded[name] = fit_vocab_rows(padded[name], cfg.vocab_size, rows)
    if fmt == "legacy":
        write_legacy(padded, cfg, directory, tp, pp, iteration)
    else:
        write_dist(padded, cfg, os.path.join(directory, iteration_dir_name(iteration)), tp, pp, iteration)
    write_tracker(directory, iteration)


def load_megatron(directory: str, trusted: bool = False,
                  cfg: Optional[ModelConfig] = None) -> tuple[Optional[ModelConfig], dict[str, torch.Tensor]]:
    """(config, gpt3d full state dict) of a Megatron checkpoint (legacy or torch_dist, found by its files) at any
    tp/pp. The config comes from the checkpoint's `args` unless `cfg` is given. Megatron pickles `args`: files are
    read with weights_only=True (plus argparse.Namespace) and a torch_dist `.metadata` with an allow-list of DCP's
    metadata classes, unless `trusted=True`. When no config is known (`args`
    unreadable and no cfg), returns (None, state dict with Megatron's vocabulary rows); fit it with
    `fit_vocab(sd, cfg)`."""
    iteration_dir = find_iteration_dir(directory)
    if is_dist(iteration_dir):
        merged = read_dist(iteration_dir, trusted)
        args = None
        try:
            common = read_common(iteration_dir, trusted)
            args = common.get("args") if common else None
        except InteropError:
            if cfg is None:
                raise
    else:
        args, merged = read_legacy(iteration_dir, trusted, cfg.n_heads if cfg is not None else None)
    if cfg is None and args is not None:
        cfg = model_config_from_args(args, iteration_dir)
    if cfg is None:
        return None, merged
    if cfg.tie_embeddings:
        merged.pop("head.weight", None)  # a tied model's last-stage copy of the embedding
    try:
        sd = fit_vocab(merged, cfg)
    except InteropError as exc:
        raise InteropError(f"{iteration_dir}: {exc}") from exc
    check_gpt3d_state_dict(sd, cfg, iteration_dir)
    return cfg, {name: sd[name] for name in gpt3d_shapes(cfg)}
