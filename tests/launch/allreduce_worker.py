"""One rank of a launcher test: discover the launch, initialise gloo from it, all-reduce rank + 1, print one line.

Run by torchrun, mpirun and srun (tests/launch, tests/slurm). The printed sum must be world * (world + 1) / 2.
"""
import os
import socket

import torch
import torch.distributed as dist

from gpt3d.launch.env import discover_launch, export_torch_env

info = discover_launch()
if info is None:
    raise SystemExit("allreduce_worker: no launcher detected")
export_torch_env(info)
dist.init_process_group("gloo", init_method="env://")
assert dist.get_rank() == info.rank and dist.get_world_size() == info.world_size
value = torch.tensor([float(info.rank + 1)])
dist.all_reduce(value)
node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
print(f"RANK {info.rank} WORLD {info.world_size} LOCAL {info.local_rank}/{info.local_world_size} "
      f"SOURCE {info.source} NODE {node} MASTER {info.master_addr}:{info.master_port} SUM {value.item():g}", flush=True)
dist.destroy_process_group()
