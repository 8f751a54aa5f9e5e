"""`gpt3d inspect CKPT`: layout, step, trainer state, config, every tensor's full shape and size; verifies checksums."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import CheckpointError
from .format import Checkpoint
from .safetensors_io import nbytes_of
from .store import resolve_checkpoint_path


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return ""


def describe(ckpt: Checkpoint, show_config: bool) -> str:
    L, T = ckpt.layout, ckpt.trainer
    lines = [f"checkpoint {ckpt.path}",
             f"  step {ckpt.step}   layout tp={L['tp']} pp={L['pp']} dp={L['dp']} vp={L['vp']}"
             f"{' schedule ' + L['schedule'] if L.get('schedule') and L['pp'] > 1 else ''}"
             f"{' distributed-optimizer' if L.get('distributed_optimizer') else ''}"
             f"   files {len(ckpt.files)}   {_size(ckpt.nbytes())}",
             f"  optimizer {T.get('optimizer', {})}",
             f"  lr_scheduler {T.get('lr_scheduler', {})}   loss_scaler {T.get('loss_scaler', {})}",
             f"  data {T.get('data', {})}"]
    m = ckpt.config.get("model", {})
    lines.append(f"  model n_layers={m.get('n_layers')} d_model={m.get('d_model')} n_heads={m.get('n_heads')} "
                 f"seq_len={m.get('seq_len')} vocab_size={m.get('vocab_size')}")
    if show_config:
        lines.append("  config " + json.dumps(ckpt.config, indent=1).replace("\n", "\n  "))
    groups = {}
    for name, t in ckpt.tensors.items():
        group = name.split("/")[0]
        groups.setdefault(group, []).append((name, t))
    width = max((len(n) for n in ckpt.tensors), default=10)
    for group, items in groups.items():
        total = sum(nbytes_of(t["dtype"], t["shape"]) for _, t in items)
        lines.append(f"  {group}: {len(items)} tensors, {_size(total)}")
        if group == "rng":
            continue
        for name, t in items:
            lines.append(f"    {name:<{width}}  {t['dtype']:<4} {str(t['shape']):<16} "
                         f"{_size(nbytes_of(t['dtype'], t['shape'])):>10}  {len(t['pieces'])} piece(s)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", help="a checkpoint directory, or a run / checkpoints directory (newest checkpoint)")
    parser.add_argument("--config", action="store_true", help="also print the resolved run config")
    parser.add_argument("--no-verify", action="store_true", help="skip the checksum verification")


def run(args: argparse.Namespace) -> int:
    try:
        ckpt = Checkpoint(resolve_checkpoint_path(args.ckpt))
        print(describe(ckpt, args.config))
        if not args.no_verify:
            ckpt.verify()
            print(f"checksums: {len(ckpt.files)} files OK (sha256)")
    except CheckpointError as exc:
        print(f"gpt3d inspect: error: {exc}", file=sys.stderr)
        return 2
    return 0
