"""Process-level setup: device, threads, torch.distributed, the ParallelContext."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from gpt3d.config.run import RunConfig
from gpt3d.heap import keep_freed_memory
from gpt3d.parallel.context import Layout, ParallelContext, resolve_layout, validate_layout


@dataclass
class Runtime:
    ctx: ParallelContext
    num_micro: int
    world_size: int
    local_world_size: int


def pick_device(choice: str, local_rank: int) -> torch.device:
    """cuda when asked or available (one GPU per local rank), else cpu. Never touches CUDA on a CPU-only torch."""
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if choice == "cuda":
        raise RuntimeError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    return torch.device("cpu")


def check_layout(cfg: RunConfig, world_size: int) -> tuple[Layout, int]:
    """Validate the layout against the world, model and batch; returns (layout, micro-batches). Starts nothing."""
    layout = resolve_layout(cfg.parallel, world_size)
    num_micro = validate_layout(layout, cfg.model, cfg.parallel, cfg.train.global_batch_size,
                                cfg.train.micro_batch_size, cfg.train.seq_len)
    return layout, num_micro


def init_runtime(cfg: RunConfig, rank: int, world_size: int, local_rank: int, local_world_size: int,
                 init_method: Optional[str] = None) -> Runtime:
    layout, num_micro = check_layout(cfg, world_size)
    device = pick_device(cfg.train.device, local_rank)
    if device.type == "cpu":
        keep_freed_memory()  # each step's large tensors reuse the last step's pages (gpt3d/heap.py)
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // max(local_world_size, 1))
    torch.set_num_threads(threads)
    if world_size > 1 and not dist.is_initialized():
        backend = cfg.parallel.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=cfg.parallel.comm_timeout_s))
    ctx = ParallelContext(layout, rank, device, cfg.parallel.comm_timeout_s,
                          last_stage_rank=0 if cfg.parallel.schedule == "zbv" else None,
                          shared_memory=cfg.parallel.cpu_collectives == "auto")
    return Runtime(ctx, num_micro, world_size, local_world_size)
