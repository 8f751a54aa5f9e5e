"""`gpt3d convert SRC DST`: re-shard a checkpoint into any layout (model and optimizer state), or move weights
between gpt3d and Hugging Face / Megatron-LM / DeepSpeed.

gpt3d -> gpt3d streams: every output tensor region is assembled from the source pieces that overlap it and written
before the next is read, so the peak memory is about one tensor (the largest region), whatever the model size; this
path never imports torch. Foreign formats go through gpt3d/interop, which works on full state dicts in memory.
The output is written to a temporary sibling directory and renamed into place: an existing DST is never touched.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import CheckpointError
from .format import Checkpoint, RankFileWriter, merge_tensors, rank_file_name, write_metadata
from .plan import TargetLayout, check_layout, model_shapes, rank_regions
from .safetensors_io import STORAGE, dtype_of, nbytes_of
from .store import resolve_checkpoint_path

FORMATS_IN = ("gpt3d", "hf", "megatron", "deepspeed")
FORMATS_OUT = ("gpt3d", "hf", "megatron")
MOMENTS = ("exp_avg", "exp_avg_sq")


class ArraySource:
    """Full tensors held in memory (an imported state dict), read like a checkpoint."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.tensors = {n: {"shape": list(a.shape), "dtype": dtype_of(a)} for n, a in arrays.items()}

    def has(self, name: str) -> bool:
        return name in self.arrays

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.arrays[name].shape)

    def read_region(self, name: str, start, size) -> np.ndarray:
        return self.arrays[name][tuple(slice(s, s + n) for s, n in zip(start, size))]

    def read(self, name: str) -> np.ndarray:
        return self.arrays[name]


class Progress:
    """A rich progress bar in bytes with the transfer rate (quiet when disabled)."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)
            self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                    TransferSpeedColumn(), TimeRemainingColumn())
            self.bar.start()
        self.task = None

    def stage(self, description: str, total: int) -> Callable[[int], None]:
        if self.bar is None:
            return lambda n: None
        task = self.bar.add_task(description, total=total)
        return lambda n: self.bar.advance(task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def target_config(config: dict, layout: TargetLayout) -> dict:
    out = copy.deepcopy(config)
    par = out.setdefault("parallel", {})
    old_stages = (par.get("pp", 1), par.get("vp", 1))
    par.update({"tp": layout.tp, "pp": layout.pp, "vp": layout.vp, "dp": layout.dp, "schedule": layout.schedule})
    if layout.pipeline_split is not None:
        par["pipeline_split"] = list(layout.pipeline_split)
    elif old_stages != (layout.pp, layout.vp):
        par["pipeline_split"] = None
    if layout.tp == 1:
        par["sequence_parallel"] = False
    return out


def write_gpt3d(source, model_cfg, layout: TargetLayout, out_dir: Path, meta: dict, progress: Progress,
                rng_files: Optional[dict[str, str]] = None) -> None:
    """Write `source`'s model (and optimizer moments, when present) as a checkpoint of `layout` in `out_dir`."""
    shapes = model_shapes(model_cfg)
    missing = [f"model/{n}" for n in shapes if not source.has(f"model/{n}")]
    wrong = [f"model/{n} {list(source.shape('model/' + n))} vs {list(s)}" for n, s in shapes.items()
             if source.has(f"model/{n}") and tuple(source.shape(f"model/{n}")) != tuple(s)]
    if missing or wrong:
        raise CheckpointError(f"source does not match its model config: missing {missing[:4]}, shapes {wrong[:4]}")
    with_optim = all(source.has(f"optim/{m}/{n}") for n in shapes for m in MOMENTS)
    check_layout(model_cfg, layout)
    writers = []
    for pp_rank in range(layout.pp):
        for tp_rank in range(layout.tp):
            w = RankFileWriter(out_dir, rank_file_name(tp_rank, pp_rank, 0))
            for name, start, size in rank_regions(model_cfg, layout, tp_rank, pp_rank):
                names = [f"model/{name}"] + ([f"optim/{m}/{name}" for m in MOMENTS] if with_optim else [])
                for full in names:
                    dtype = source.tensors[full]["dtype"]
                    w.add(full, dtype, source.shape(full), start, size,
                          (lambda full=full, start=start, size=size: source.read_region(full, start, size)))
            writers.append(((tp_rank, pp_rank, 0), w))
    for name, file in (rng_files or {}).items():  # same layout: each rank's RNG streams stay with it
        w = next((w for _, w in writers if w.file == file), None)
        if w is None:
            coords = tuple(int(file[i:i + 2]) for i in (2, 7, 12))
            w = RankFileWriter(out_dir, file)
            writers.append(((coords[0], coords[1], coords[2]), w))
        shape = source.shape(name)
        w.add(name, source.tensors[name]["dtype"], shape, (0,) * len(shape), shape,
              (lambda name=name: source.read(name)))
    total = sum(nbytes_of(item[1], item[7]) for _, w in writers for item in w.items)
    advance = progress.stage("convert", total)
    files, tensors = {}, {}
    for (tp, pp, dp), w in writers:
        f, t = w.write(advance)
        rank = tp + layout.tp * (dp + layout.dp * pp)
        files.update({k: {**v, "rank": rank, "tp": tp, "pp": pp, "dp": dp} for k, v in f.items()})
        merge_tensors(tensors, t)
    write_metadata(out_dir, {**meta, "files": files, "tensors": tensors})


SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbh1", "zbv")
ONE_CHUNK = ("gpipe", "1f1b", "zbh1")


def _layout_from(args, base: dict, base_schedule: str = "1f1b") -> TargetLayout:
    """The target layout: each flag given, else the source's. A new --schedule brings its own chunks per rank (zbv 2,
    gpipe/1f1b/zbh1 1, interleaved the source's vp if > 1, else 2) unless --vp is given; 1f1b with vp > 1 is the
    interleaved schedule (as in parallel.schedule), interleaved with vp 1 is 1f1b."""
    def pick(flag, key, default=1):
        value = getattr(args, flag, None)
        return value if value is not None else (base.get(key) or default)
    split = base.get("pipeline_split")
    tp, pp, dp = pick("tp", "tp"), pick("pp", "pp"), pick("dp", "dp")
    source_schedule = base.get("schedule") or base_schedule
    schedule = getattr(args, "schedule", None) or source_schedule
    vp = getattr(args, "vp", None)
    if vp is None:
        if schedule == source_schedule:
            vp = base.get("vp") or 1
        else:
            vp = 2 if schedule == "zbv" else 1 if schedule in ONE_CHUNK else max(base.get("vp") or 1, 2)
    if schedule == "1f1b" and vp > 1:
        schedule = "interleaved"
    elif schedule == "interleaved" and vp == 1 and getattr(args, "schedule", None) is None:
        schedule = "1f1b"
    if (pp, vp) != (base.get("pp", 1), base.get("vp", 1)):
        split = None
    for flag, value in (("tp", tp), ("pp", pp), ("vp", vp), ("dp", dp)):
        if value < 1:
            raise CheckpointError(f"--{flag} {value}: must be >= 1")
    if schedule not in SCHEDULES:
        raise CheckpointError(f"--schedule {schedule}: unknown; choose one of {', '.join(SCHEDULES)}")
    return TargetLayout(tp, pp, dp, vp, tuple(split) if split else None, schedule)


def _fresh_trainer_state(cfg: dict) -> dict:
    G = cfg["train"]["global_batch_size"]
    return {"optimizer": {"type": "adamw", "step_count": 0, "moments": list(MOMENTS)},
            "lr_scheduler": {"step": 0}, "loss_scaler": {"enabled": cfg["train"].get("dtype") == "fp16",
                                                          "scale": cfg["optim"].get("initial_loss_scale", 1.0),
                                                          "good_steps": 0},
            "data": {"step": 0, "consumed_samples": 0, "global_batch_size": G, "seed": cfg["train"]["seed"]}}


def _run_config_dict(model_cfg, args) -> dict:
    from gpt3d.config.base import to_dict
    from gpt3d.config.run import build_config, load_raw
    raw = load_raw(args.config, args.overrides)
    raw["model"] = to_dict(model_cfg)
    return build_config(raw).to_dict()


def _model_config_from_args(args, what: str):
    if not args.config:
        raise CheckpointError(f"--from {what}: the checkpoint does not say its model shape; pass --config NAME|YAML "
                              f"(and --set model.KEY=VALUE) describing the model")
    from gpt3d.config.run import load_config
    return load_config(args.config, args.overrides).model


def _torch_state_dict(source) -> dict:
    import torch
    return {n[len("model/"):]: torch.from_numpy(np.ascontiguousarray(source.read(n)))
            for n in source.tensors if n.startswith("model/")}


def _language_model(sd: dict, model_cfg) -> tuple[dict, object]:
    """A PPO policy (`gpt3d align`) exports as the language model it is: its value head only served training."""
    import dataclasses
    if set(model_cfg.task_heads) != {"value"}:
        return sd, model_cfg
    print("gpt3d convert: task_heads.value (PPO's value head) is not part of the exported language model", flush=True)
    return ({k: v for k, v in sd.items() if not k.startswith("task_heads.")},
            dataclasses.replace(model_cfg, task_heads={}))


def _import_foreign(args) -> tuple[ArraySource, object]:
    """(source of model/<name> arrays, ModelConfig) for --from hf|megatron|deepspeed."""
    kind = args.from_format
    if kind == "hf":
        from gpt3d.interop.hf import load_hf_pretrained
        model_cfg, sd = load_hf_pretrained(str(args.src))
    elif kind == "megatron":
        from gpt3d.interop.megatron import load_megatron
        model_cfg, sd = load_megatron(str(args.src), args.trusted)
        if model_cfg is None:
            model_cfg = _model_config_from_args(args, "megatron")
    else:
        from gpt3d.interop.deepspeed import load_deepspeed
        model_cfg = _model_config_from_args(args, "deepspeed")
        sd = load_deepspeed(str(args.src), tag=args.tag, trusted=args.trusted)
    import torch
    arrays = {}
    for name, tensor in sd.items():
        t = tensor.detach().cpu().contiguous()
        arrays[f"model/{name}"] = (t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16
                                   else t.numpy())
    return ArraySource(arrays), model_cfg


def convert(args) -> Path:
    src, dst = Path(args.src), Path(args.dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"{dst}: already exists; convert never overwrites, choose a new destination")
    if args.from_format not in ("gpt3d",) and not src.exists():
        raise CheckpointError(f"{src}: no such directory")
    progress = Progress(not args.quiet)
    source = None
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    try:
        if args.from_format == "gpt3d":
            ckpt = Checkpoint(resolve_checkpoint_path(src))
            ckpt.verify(on_bytes=progress.stage("verify", ckpt.nbytes()))
            source, model_cfg, config = ckpt, ckpt.model_config(), ckpt.config
            meta_base = {"step": ckpt.step, "trainer": ckpt.trainer}
            base_layout = ckpt.layout
        else:
            source, model_cfg = _import_foreign(args)
            config = _run_config_dict(model_cfg, args)
            meta_base = {"step": 0, "trainer": _fresh_trainer_state(config)}
            base_layout = {}
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if args.to_format == "gpt3d":
            layout = _layout_from(args, base_layout, config.get("parallel", {}).get("schedule") or "1f1b")
            check_layout(model_cfg, layout)
            rng = {}
            same = all(base_layout.get(k) == getattr(layout, k) for k in ("tp", "pp", "dp", "vp")) and (
                layout.schedule == (base_layout.get("schedule") or config.get("parallel", {}).get("schedule")))
            if same and isinstance(source, Checkpoint):
                for n in source.names("rng/"):
                    rng[n] = source.tensors[n]["pieces"][0]["file"]
            config = target_config(config, layout)
            meta = {**meta_base, "config": config,
                    "layout": {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "vp": layout.vp,
                               "schedule": layout.schedule,
                               "distributed_optimizer": bool(config.get("parallel", {}).get("distributed_optimizer")),
                               "pipeline_split": list(layout.pipeline_split) if layout.pipeline_split else None},
                    "converted_from": {"path": str(src), "format": args.from_format, "layout": base_layout}}
            write_gpt3d(source, model_cfg, layout, tmp, meta, progress, rng)
        elif args.to_format == "hf":
            from gpt3d.interop.hf import save_hf_pretrained
            save_hf_pretrained(*_language_model(_torch_state_dict(source), model_cfg), str(tmp))
        else:
            from gpt3d.interop.megatron import save_megatron
            step = meta_base["step"]
            save_megatron(_torch_state_dict(source), model_cfg, str(tmp), args.tp or 1, args.pp or 1, step,
                          args.megatron_format)
        if dst.exists():
            dst.rmdir()  # empty, checked above
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        progress.close()
        if isinstance(source, Checkpoint):
            source.close()
    return dst


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source: a gpt3d checkpoint (or run directory), or a foreign checkpoint with --from")
    parser.add_argument("dst", help="new directory to write (never overwritten)")
    for flag, what in (("tp", "tensor"), ("pp", "pipeline"), ("vp", "virtual pipeline"), ("dp", "data")):
        parser.add_argument(f"--{flag}", type=int, help=f"target {what}-parallel degree (default: the source's)")
    parser.add_argument("--schedule", choices=SCHEDULES,
                        help="target pipeline schedule (default: the source's); it decides which rank holds which "
                             "stage (zbv: a V, 2 chunks per rank)")
    parser.add_argument("--from", dest="from_format", choices=FORMATS_IN, default="gpt3d", help="source format")
    parser.add_argument("--to", dest="to_format", choices=FORMATS_OUT, default="gpt3d", help="target format")
    parser.add_argument("--megatron-format", choices=("legacy", "torch_dist"), default="torch_dist",
                        help="--to megatron: checkpoint flavour")
    parser.add_argument("--trusted", action="store_true",
                        help="--from megatron|deepspeed: allow full unpickling of their pickled files (runs code "
                             "from them: only for files you trust)")
    parser.add_argument("--tag", help="--from deepspeed: the checkpoint tag (default: the 'latest' file)")
    parser.add_argument("--config", help="--from megatron|deepspeed|hf: run config (model shape, training defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a --config value")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from gpt3d.config.base import ConfigError
    start = time.perf_counter()
    try:
        out = convert(args)
    except (CheckpointError, ConfigError, ValueError) as exc:
        print(f"gpt3d convert: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only destination: the partial .tmp directory is already removed
        from gpt3d.oserror import os_error_line
        print(f"gpt3d convert: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    print(f"gpt3d convert: wrote {out} ({args.to_format}) in {time.perf_counter() - start:.1f}s")
    return 0
