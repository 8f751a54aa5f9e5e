"""A stand-in for the training loop's stop logic, run under srun: wait for a stop signal, stop on every rank at the
same iteration, rank 0 requeues the job; the requeued run reports its restart count.

READY_DIR (exported by the batch script via --env) receives one file per rank once its handler is installed.
"""
import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from gpt3d.launch.env import discover_launch, export_torch_env
from gpt3d.slurm.preemption import PreemptionHandler, requeue_job

handler = PreemptionHandler().install()
info = discover_launch()
assert info is not None and info.source == "slurm", info
export_torch_env(info)
dist.init_process_group("gloo", init_method="env://")
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
if restart > 0:
    print(f"RESUMED rank {info.rank} restart {restart}", flush=True)
    dist.destroy_process_group()
    sys.exit(0)

Path(os.environ["READY_DIR"], f"ready-{info.rank}").touch()
step = 0
deadline = time.monotonic() + 120
while not handler.stop_requested():  # all-reduced: every rank leaves at the same step
    step += 1
    time.sleep(0.05)
    if time.monotonic() > deadline:
        sys.exit(f"rank {info.rank}: no stop signal within 120 s")
received = handler.signal_received.name if handler.signal_received else "none"
print(f"STOP rank {info.rank} step {step} signal {received}", flush=True)
Path(os.environ["READY_DIR"], f"stop-rank-{info.rank}-step-{step}-signal-{received}").touch()  # see below: no I/O race
dist.barrier()  # stands for the collective checkpoint save: complete on every rank before the requeue
if info.rank == 0:
    # A file, not a line of output: the requeue ends the step while srun may still hold the tasks' last lines (seen
    # in CI: lines printed just before it were lost). The restart that follows shows that the requeue worked.
    Path(os.environ["READY_DIR"], f"requeuing-rank-{info.rank}-step-{step}").touch()
    if not requeue_job():
        sys.exit("rank 0: scontrol requeue failed")
sys.exit(0)
