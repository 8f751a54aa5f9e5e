"""`gpt3d plan --layout ...`: the prediction and memory breakdown of one given layout (not only the search's top K),
with what does not divide or does not fit and the smallest change that does."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from gpt3d.config.model import ModelConfig

from .fit_advice import suggestions
from .hardware import GPUSpec
from .layout import Layout, divisibility_problems
from .memory import ZERO_BUBBLE_SCHEDULES, LayoutError, MemoryBreakdown, estimate_memory, usable_bytes
from .performance import PerformanceOptions, Prediction, predict


@dataclass(frozen=True)
class LayoutEvaluation:
    layout: Layout
    prediction: Prediction
    memory: MemoryBreakdown
    capacity: float
    fixes: list[str]
    """the smallest changes that fit (empty when it fits)"""

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.capacity


def evaluate_layout(model: ModelConfig, layout: Layout, gpu: GPUSpec, num_gpus: int, global_batch: int,
                    seq_len: int, options: PerformanceOptions, check_layers: bool = True) -> LayoutEvaluation:
    """LayoutError naming every divisibility problem; else the layout's prediction (fitting or not)."""
    problems = divisibility_problems(model, layout, num_gpus, global_batch, seq_len, check_layers)
    if problems:
        raise LayoutError(f"{layout.label()} on {num_gpus} GPUs does not divide: "
                          + "; ".join(p.message for p in problems))
    memory = estimate_memory(model, layout.tp, layout.pp, layout.dp, layout.vp, layout.micro_batch, seq_len,
                             layout.num_microbatches(global_batch), layout.sequence_parallel, layout.recompute,
                             layout.distributed_optimizer, options.dtype, layout.schedule)
    capacity = usable_bytes(gpu)
    fixes: list[str] = []
    if memory.total > capacity:
        fixes = suggestions(model, layout, num_gpus, global_batch, seq_len, options.dtype, gpu,
                            options.gpus_per_node)
    return LayoutEvaluation(layout, predict(model, layout, gpu, global_batch, seq_len, options), memory, capacity,
                            fixes)


def describe_evaluation(ev: LayoutEvaluation, gpu: GPUSpec, fixes_or: Optional[str] = None) -> str:
    """Plain-text report of one layout: step time, throughput, MFU, time split and memory split."""
    p, t = ev.prediction, ev.prediction.time
    lines = [
        f"layout {ev.layout.label()} on {ev.layout.num_gpus} x {gpu.name}",
        f"  step {p.iteration_time_s:.2f} s, {p.tokens_per_s:,.0f} tokens/s, {p.model_tflops_per_gpu:.1f} TFLOP/s "
        f"per GPU, MFU {p.mfu:.1%}",
        f"  time per step (ms): compute {t.compute * 1e3:,.0f}, TP comm {t.tp_comm * 1e3:,.0f}, PP bubble "
        f"{t.pp_bubble * 1e3:,.0f}, PP p2p {t.pp_comm * 1e3:,.0f}, DP exposed {t.dp_comm_exposed * 1e3:,.0f}, "
        f"optimizer {t.optimizer * 1e3:,.0f}",
        f"  memory, {'most loaded' if ev.layout.schedule in ZERO_BUBBLE_SCHEDULES else 'first'} pipeline stage: "
        f"{ev.memory.describe()}",
        f"  {'fits' if ev.fits else 'does NOT fit'}: {ev.memory.total / ev.capacity:.0%} of "
        f"{ev.capacity / 2 ** 30:.1f} GiB usable on {gpu.name}",
    ]
    if not ev.fits:
        lines.append("  smallest changes that fit: " + (" or ".join(ev.fixes) if ev.fixes else
                                                        (fixes_or or "none found on this many GPUs")))
    return "\n".join(lines)
