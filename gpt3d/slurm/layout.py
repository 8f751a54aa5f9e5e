"""Does a run's parallel layout fit an allocation? Checked before anything is submitted."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from gpt3d.config import RunConfig
from gpt3d.planner.fit_advice import check_fits
from gpt3d.planner.memory import LayoutError, MemoryBreakdown


class SubmitLayoutError(ValueError):
    """The layout does not divide the GPUs, contradicts the config, or does not fit GPU memory."""


@dataclass(frozen=True)
class JobLayout:
    tp: int
    pp: int
    dp: int
    nodes: int
    gpus_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def describe(self) -> str:
        return (f"{self.nodes} node(s) x {self.gpus_per_node} = {self.world_size} ranks: "
                f"tp={self.tp} x pp={self.pp} x dp={self.dp}")


def resolve_layout(run: RunConfig, nodes: int, gpus_per_node: int) -> JobLayout:
    """tp and pp from the config, dp = GPUs / (tp * pp); refuse layouts the job could not run."""
    if nodes < 1 or gpus_per_node < 1:
        raise SubmitLayoutError(f"--nodes and --gpus-per-node must be >= 1, got {nodes} and {gpus_per_node}")
    tp, pp = run.parallel.tp, run.parallel.pp
    world = nodes * gpus_per_node
    model_parallel = tp * pp
    if world % model_parallel != 0:
        nodes_per_replica = max(1, model_parallel // gpus_per_node)
        raise SubmitLayoutError(
            f"{nodes} nodes x {gpus_per_node} GPUs = {world} GPUs is not divisible by tp*pp = {tp}*{pp} = "
            f"{model_parallel}; use a multiple of {model_parallel} GPUs (e.g. --nodes {nodes_per_replica} or a "
            f"multiple of it with {gpus_per_node} GPUs per node), or change parallel.tp / parallel.pp")
    dp = world // model_parallel
    if run.parallel.dp is not None and run.parallel.dp != dp:
        raise SubmitLayoutError(
            f"parallel.dp={run.parallel.dp} but {world} GPUs / (tp*pp = {model_parallel}) gives dp={dp}; "
            f"drop parallel.dp (it is derived) or submit {run.parallel.dp * model_parallel} GPUs")
    micro, batch = run.train.micro_batch_size, run.train.global_batch_size
    if batch % (micro * dp) != 0:
        raise SubmitLayoutError(
            f"train.global_batch_size={batch} is not a multiple of micro_batch_size*dp = {micro}*{dp} = {micro * dp}; "
            f"change the batch size or the node count")
    return JobLayout(tp=tp, pp=pp, dp=dp, nodes=nodes, gpus_per_node=gpus_per_node)


def with_layout(run: RunConfig, layout: JobLayout) -> RunConfig:
    """The run config with dp filled in, as the job will run it."""
    return dataclasses.replace(run, parallel=dataclasses.replace(run.parallel, dp=layout.dp))


class MemoryVerdict:
    """What `gpt3d submit` prints about memory: the dry run's figures (and the planner's breakdown when it fits)."""

    def __init__(self, note: str, planned: Optional[MemoryBreakdown]):
        self.note, self.planned = note, planned

    def describe(self) -> str:
        return self.note


def check_memory(run: RunConfig, layout: JobLayout, gpu: str) -> MemoryVerdict:
    """The memory verdict for this layout on `gpu`: the dry run of rank 0 (gpt3d/dryrun/fit.py) decides, unless the
    layout does not divide or the planner puts it far beyond the GPU; raises SubmitLayoutError (with the dry run's or
    the planner's numbers and the smallest changes that fit) when it does not fit."""
    from gpt3d.dryrun.fit import check_fits_by_dry_run, near_enough_for_a_dry_run
    job = with_layout(run, layout)
    try:
        planned = check_fits(job, gpu, layout.world_size)
    except LayoutError as exc:
        # Does not divide, or far beyond the GPU: the planner's figures (checked against the dry run) say enough.
        if not near_enough_for_a_dry_run(job, gpu, layout.world_size):
            raise SubmitLayoutError(f"{layout.describe()} on {gpu}: {exc}") from None
        planned = None
    try:
        note = check_fits_by_dry_run(job, gpu)
    except LayoutError as exc:
        raise SubmitLayoutError(f"{layout.describe()} on {gpu}: {exc}") from None
    return MemoryVerdict(note, planned)
