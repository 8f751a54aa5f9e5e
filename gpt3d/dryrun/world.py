"""One rank of a full-size job, in this process: a fake process group of the job's world size and that rank's real
ParallelContext. Collectives and point-to-point transfers on the fake backend are no-ops that keep their tensors'
shapes (a receive leaves its fresh buffer as it was allocated), so the real pipeline schedule and gradient
synchronisation run unchanged."""
from __future__ import annotations

import torch
import torch.distributed as dist

from gpt3d.config.run import RunConfig
from gpt3d.parallel.context import ParallelContext
from gpt3d.train.runtime import Runtime, check_layout

DRY_RUN_DEVICE = torch.device("cpu")
"""The fake tensors' device: CPU, so the run needs no GPU and no CUDA build of torch (the shapes and dtypes, hence the
bytes, are the device's; see docs/dryrun.md for the few CPU/GPU differences)."""


def init_fake_rank(cfg: RunConfig, world_size: int, rank: int) -> Runtime:
    """Join a fake world as `rank` and build its ParallelContext; raises the layout's own error for bad layouts."""
    from torch.testing._internal.distributed.fake_pg import FakeStore
    layout, num_micro = check_layout(cfg, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"--rank {rank} is not a rank of this layout (0 .. {world_size - 1})")
    leave_fake_world()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    ctx = ParallelContext(layout, rank, DRY_RUN_DEVICE, cfg.parallel.comm_timeout_s)
    return Runtime(ctx, num_micro, world_size, 1)


def leave_fake_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
