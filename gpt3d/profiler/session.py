"""One rank's profiling run: warm-up steps, measured steps, the device peak, peak memory; then every rank's summary is
gathered on rank 0, which builds the report and writes the outputs."""
from __future__ import annotations

import os
import resource
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from gpt3d.config.base import ConfigError
from gpt3d.config.run import RunConfig
from gpt3d.train.loop import build_data, global_batch, make_trainer, report_failure
from gpt3d.train.runtime import Runtime, init_runtime
from gpt3d.train.trainer import Trainer

from .step import StepProfile, TrainerProfiler


@dataclass
class ProfileOptions:
    steps: int = 6  # total steps, the first `warmup` of them not measured
    warmup: int = 2
    out_dir: Optional[str] = None  # where rank 0 writes profile.json/.csv/.png; None: write nothing
    peak_tflops: Optional[float] = None  # per-device peak for MFU; None: known GPU table or measured CPU GEMM
    trace: bool = False  # one extra step under torch.profiler, Chrome trace per rank
    config_name: str = ""
    quiet: bool = False  # no terminal table

    def __post_init__(self):
        if self.warmup < 0:
            raise ConfigError(f"--warmup: must be >= 0, got {self.warmup}")
        if self.steps <= self.warmup:
            raise ConfigError(f"--steps {self.steps} must exceed --warmup {self.warmup}: the profile measures the steps "
                              f"after warm-up ({self.steps} - {self.warmup} = {self.steps - self.warmup} left); raise "
                              f"--steps or lower --warmup")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ConfigError(f"--peak-tflops: must be positive, got {self.peak_tflops}")

    @property
    def measured_steps(self) -> int:
        return self.steps - self.warmup

    @property
    def total_steps(self) -> int:
        """Steps the data must supply (the trace step runs after the measured ones)."""
        return self.steps + int(self.trace)


TRAIN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_peak_tflops(device: torch.device, threads: int, dtype: torch.dtype) -> tuple[float, str]:
    """(peak TFLOP/s of one device, where it comes from). CUDA: the datasheet bf16 peak of a known GPU; CPU: the
    hardware peak of this rank's cores for the training dtype (gpt3d/profiler/cpu_peak.py), never a measured GEMM."""
    from gpt3d.planner.hardware import A100_BF16_TFLOPS, H100_BF16_TFLOPS
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        if "h100" in name:
            return H100_BF16_TFLOPS, f"H100 bf16 datasheet ({name})"
        if "a100" in name:
            return A100_BF16_TFLOPS, f"A100 bf16 datasheet ({name})"
        raise ConfigError(f"--peak-tflops: no known peak for GPU {name!r} (known: A100, H100); pass --peak-tflops X")
    from gpt3d.profiler.cpu_peak import cpu_peak_tflops
    return cpu_peak_tflops(dtype, threads)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "RSS high-water mark (ru_maxrss)"


def summarize_rank(profiler: TrainerProfiler, steps: list[StepProfile], rt: Runtime, peak: tuple[float, str],
                   memory: tuple[int, str]) -> dict:
    """Everything rank 0 needs from this rank, as plain Python values (picklable, JSON-able)."""
    from .analysis import rank_summary
    return rank_summary(profiler, steps, rt, peak, memory)


def _barrier(rt: Runtime) -> None:
    if rt.world_size > 1:
        dist.barrier(group=rt.ctx.world_group.pg)


def run_profile(cfg: RunConfig, options: ProfileOptions, rt: Runtime) -> Optional[dict]:
    """Profile on this rank; returns the report on rank 0 (None elsewhere)."""
    ctx = rt.ctx
    data = build_data(cfg)
    trainer = make_trainer(cfg, rt)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    _barrier(rt)
    peak = (options.peak_tflops, "--peak-tflops") if options.peak_tflops else \
        device_peak_tflops(ctx.device, torch.get_num_threads(), TRAIN_DTYPES[cfg.train.dtype])
    profiler = TrainerProfiler(trainer)
    G = cfg.train.global_batch_size
    measured: list[StepProfile] = []
    for step in range(options.steps):
        batch = global_batch(data["train"], step, G)
        _barrier(rt)  # every rank starts the step together: one time base for the pipeline timeline
        _, profile = profiler.profile_step(batch)  # warm-up steps run instrumented too, and are discarded
        if step >= options.warmup:
            measured.append(profile)
    memory = peak_memory_bytes(ctx.device)
    trace_files: list[str] = []
    if options.trace and options.out_dir:
        trace_files = _trace_step(trainer, global_batch(data["train"], options.steps, G), Path(options.out_dir),
                                  ctx.rank)
    summary = summarize_rank(profiler, measured, rt, peak, memory)
    summary["trace_files"] = trace_files
    if rt.world_size > 1:
        gathered: list = [None] * rt.world_size if ctx.rank == 0 else None
        dist.gather_object(summary, gathered, dst=0, group=ctx.world_group.pg)
    else:
        gathered = [summary]
    if ctx.rank != 0:
        return None
    from .report import build_report, print_table, write_outputs
    report = build_report(cfg, options, ctx.layout, rt.num_micro, gathered)
    if options.out_dir:
        write_outputs(report, Path(options.out_dir))
    if not options.quiet:
        print_table(report)
    return report


def _trace_step(trainer: Trainer, batch: np.ndarray, out_dir: Path, rank: int) -> list[str]:
    """One extra (unmeasured) step under torch.profiler, exported as a Chrome trace."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    if trainer.ctx.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    out_dir.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities, record_shapes=True) as prof:
        trainer.train_step(batch)
    path = out_dir / f"trace_rank{rank}.json"
    prof.export_chrome_trace(str(path))
    return [path.name]


def profile_rank(cfg: RunConfig, options: ProfileOptions, rank: int, world_size: int, local_rank: int,
                 local_world_size: int) -> Optional[dict]:
    """Entry point of one rank (in-process, spawned, or under a launcher)."""
    rt = init_runtime(cfg, rank, world_size, local_rank, local_world_size)
    if world_size == 1:
        return run_profile(cfg, options, rt)
    try:
        return run_profile(cfg, options, rt)
    except Exception as exc:  # noqa: BLE001 - say where, then exit without hanging in teardown
        report_failure(rt.ctx, exc)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
