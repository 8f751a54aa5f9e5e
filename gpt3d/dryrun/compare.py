"""The dry run next to the planner: the same categories, for the same stage of the same layout."""
from __future__ import annotations

from dataclasses import dataclass

from gpt3d.config.run import RunConfig
from gpt3d.planner.memory import (ACTIVATION_BYTES, MemoryBreakdown, comm_tensor_bytes, estimate_memory,
                                  nccl_buffer_bytes, stage_parameters)

from .run import DryRunResult

COMPARED = ("params", "grads", "optimizer", "activations", "comm", "deferred_w")
"""Categories both report (the planner has no temporaries; NCCL's buffers are not tensors, so only the planner has
them)."""


TOLERANCE = 0.10
"""The planner must match each category of the dry run within 10% (issue 12)..."""
SMALL_CATEGORY = 0.01
"""...or, for categories too small for a relative error to mean anything (a 6 MiB receive buffer), within 1% of the
rank's peak."""


@dataclass(frozen=True)
class Comparison:
    dry: dict[str, int]
    """each category's own peak in the dry run (the planner predicts each category's peak)"""
    planned: dict[str, float]
    nccl: float
    """NCCL communicator buffers (planner constant), added to the dry run's total for the fit check"""
    planned_peak: float = 0.0
    """the planner's total of the compared tensors at once (zero-bubble schedules: activations and deferred-W
    gradients at their joint peak, not their two peaks added), without nccl"""

    def agrees(self, category: str, peak_total: float, tolerance: float = TOLERANCE) -> bool:
        """Within `tolerance` of the dry run, or, for a category under 1% of the rank's peak, within 1% of the peak."""
        error = abs(self.planned[category] - self.dry[category])
        return error <= max(tolerance * self.dry[category], SMALL_CATEGORY * peak_total)

    def relative_error(self, category: str) -> float:
        dry = self.dry[category]
        return (self.planned[category] - dry) / dry if dry else (0.0 if not self.planned[category] else float("inf"))


def planner_breakdown(cfg: RunConfig, dp: int, stage: int) -> MemoryBreakdown:
    par, train = cfg.parallel, cfg.train
    seq = train.seq_len or cfg.model.seq_len
    num_micro = train.global_batch_size // (train.micro_batch_size * dp)
    schedule = "1f1b" if par.schedule == "interleaved" else par.schedule  # the planner's interleaving: 1f1b, vp > 1
    return estimate_memory(cfg.model, par.tp, par.pp, dp, par.vp, train.micro_batch_size, seq, num_micro,
                           par.sequence_parallel, par.recompute, par.distributed_optimizer, train.dtype, schedule,
                           stage)


def compare(cfg: RunConfig, result: DryRunResult, dp: int) -> Comparison:
    par, train = cfg.parallel, cfg.train
    planned = planner_breakdown(cfg, dp, result.coords[2])
    seq = train.seq_len or cfg.model.seq_len
    stage = result.coords[2]
    comm = comm_tensor_bytes(cfg.model, par.tp, par.pp, dp, train.micro_batch_size, seq,
                             par.sequence_parallel and par.tp > 1, ACTIVATION_BYTES[train.dtype],
                             par.distributed_optimizer,
                             stage_parameters(cfg.model, par.tp, par.pp, stage, par.schedule), stage)
    return Comparison(
        dry=dict(result.peak.category_max),
        planned={"params": planned.params, "grads": planned.grads, "optimizer": planned.optimizer,
                 "activations": planned.activations, "comm": comm, "deferred_w": planned.deferred_w},
        nccl=nccl_buffer_bytes(par.tp, par.pp, dp),
        planned_peak=planned.total - planned.comm_buffers + comm)
