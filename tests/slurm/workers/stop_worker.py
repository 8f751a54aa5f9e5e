"""A rank that loops until PreemptionHandler.stop_requested(); used with real signals by test_slurm_preemption.py.

argv: READY_FILE. With RANK/WORLD_SIZE in the environment it joins a gloo group first, so stop_requested all-reduces.
"""
import os
import sys
import time
from pathlib import Path

from gpt3d.launch.spawn import leave_job
from gpt3d.slurm.preemption import PreemptionHandler

handler = PreemptionHandler().install()
if "WORLD_SIZE" in os.environ:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="env://")
Path(sys.argv[1]).touch()
step = 0
deadline = time.monotonic() + 60
while not handler.stop_requested():
    step += 1
    time.sleep(0.02)
    if time.monotonic() > deadline:
        sys.exit("no stop within 60 s")
received = handler.signal_received.name if handler.signal_received else "none"
print(f"STOPPED step {step} signal {received}", flush=True)
# End as every gpt3d rank does (barrier, destroy the group, os._exit): a plain interpreter exit with a live gloo group
# can abort in gloo's static destructors ("terminate called without an active exception"), a teardown race that has
# nothing to do with the stop being tested.
leave_job()
