"""Enumerate every layout of a run on N GPUs, discard those that do not divide or do not fit, rank the rest by
predicted throughput."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator

from gpt3d.config.model import ModelConfig

from .hardware import GiB, GPUSpec
from .layout import RECOMPUTE_MODES, Layout, divisibility_problems
from .memory import LayoutError, estimate_memory, usable_bytes
from .performance import PerformanceOptions, Prediction, predict

MAX_TP_NODES = 2
"""TP degrees up to this many nodes are considered (beyond one node TP crosses InfiniBand and is never competitive,
but the planner shows why rather than assuming it)."""
MAX_MICRO_BATCH = 32
"""Largest micro-batch tried: beyond it GEMMs are already at full efficiency and only memory grows."""
MAX_VP = 8
"""Largest interleaving degree tried (more virtual stages multiply the point-to-point traffic)."""


def _divisors(n: int, limit: int) -> list[int]:
    return [k for k in range(1, min(n, limit) + 1) if n % k == 0]


@dataclass
class DiscardGroup:
    """Layouts discarded for one reason."""

    reason: str
    count: int = 0
    example: str = ""
    """a representative layout and the numbers (for 'does not fit': the fastest layout that did not fit)"""
    example_tokens_per_s: float = -1.0
    closest: str = ""
    """for 'does not fit': the layout needing the least memory"""
    closest_bytes: float = float("inf")


@dataclass
class PlanResult:
    model: ModelConfig
    gpu: GPUSpec
    num_gpus: int
    global_batch: int
    seq_len: int
    ranked: list[Prediction]
    discarded: dict[str, DiscardGroup] = field(default_factory=dict)
    candidates: int = 0
    elapsed_s: float = 0.0


def candidate_layouts(model: ModelConfig, num_gpus: int, global_batch: int, gpus_per_node: int) -> Iterator[Layout]:
    """Every combination the search considers: tp * pp * dp = num_gpus always holds; the model/batch may not divide."""
    for tp in _divisors(num_gpus, gpus_per_node * MAX_TP_NODES):
        for pp in _divisors(num_gpus // tp, model.n_layers):
            dp = num_gpus // (tp * pp)
            per_rank = global_batch // dp if global_batch % dp == 0 else global_batch
            micro_batches = _divisors(per_rank, MAX_MICRO_BATCH) if global_batch % dp == 0 else [1]
            vps = [1] + ([v for v in _divisors(max(1, model.n_layers // pp), MAX_VP) if v > 1] if pp > 1 else [])
            for mb, vp, sp, rc, dopt in itertools.product(micro_batches, vps, (False, True) if tp > 1 else (False,),
                                                          RECOMPUTE_MODES, (False, True) if dp > 1 else (False,)):
                for schedule in schedules_for(pp, vp):
                    yield Layout(tp=tp, pp=pp, dp=dp, vp=vp, micro_batch=mb, sequence_parallel=sp, recompute=rc,
                                 distributed_optimizer=dopt, schedule=schedule)


def schedules_for(pp: int, vp: int) -> tuple[str, ...]:
    """The schedule dimension: 1F1B (interleaved when vp > 1) and the zero-bubble ZB-H1 (vp 1) and ZB-V (vp 2).
    GPipe is never faster than 1F1B at more memory, so it is not searched."""
    if pp == 1:
        return ("1f1b",)
    return ("1f1b", "zbh1") if vp == 1 else ("1f1b", "zbv") if vp == 2 else ("1f1b",)


def plan(model: ModelConfig, gpu: GPUSpec, num_gpus: int, global_batch: int, seq_len: int, top_k: int = 5,
         options: PerformanceOptions = PerformanceOptions()) -> PlanResult:
    """The top_k layouts by predicted tokens/s and why the others were discarded; LayoutError if none is usable."""
    if num_gpus < 1 or global_batch < 1 or seq_len < 1 or top_k < 1:
        raise LayoutError(f"num_gpus, global batch, seq_len and top must be >= 1 (got {num_gpus}, {global_batch}, "
                          f"{seq_len}, {top_k})")
    if seq_len > model.seq_len:
        raise LayoutError(f"seq_len {seq_len} exceeds the model's position table ({model.seq_len})")
    start = time.perf_counter()
    result = PlanResult(model, gpu, num_gpus, global_batch, seq_len, ranked=[])
    capacity = usable_bytes(gpu)
    fitting: list[Prediction] = []
    for layout in candidate_layouts(model, num_gpus, global_batch, options.gpus_per_node):
        result.candidates += 1
        problems = divisibility_problems(model, layout, num_gpus, global_batch, seq_len)
        if problems:
            key = f"does not divide: {problems[0].kind}"
            group = result.discarded.setdefault(key, DiscardGroup(key))
            group.count += 1
            group.example = group.example or f"{layout.label()}: {problems[0].message}"
            continue
        m = layout.num_microbatches(global_batch)
        memory = estimate_memory(model, layout.tp, layout.pp, layout.dp, layout.vp, layout.micro_batch, seq_len, m,
                                 layout.sequence_parallel, layout.recompute, layout.distributed_optimizer,
                                 options.dtype, layout.schedule)
        if memory.total > capacity:
            group = result.discarded.setdefault("does not fit", DiscardGroup("does not fit"))
            group.count += 1
            if memory.total < group.closest_bytes:
                group.closest_bytes = memory.total
                group.closest = f"{layout.label()}: needs {memory.describe()}"
            # name the non-fitting layout that would have been fastest: what memory costs
            if group.count <= 1 or memory.total < capacity * 1.25:
                prediction = predict(model, layout, gpu, global_batch, seq_len, options)
                if prediction.tokens_per_s > group.example_tokens_per_s:
                    group.example_tokens_per_s = prediction.tokens_per_s
                    group.example = (f"{layout.label()}: needs {memory.describe()} > {capacity / GiB:.1f} GiB "
                                     f"usable on {gpu.name}")
            continue
        fitting.append(predict(model, layout, gpu, global_batch, seq_len, options))
    fitting.sort(key=lambda p: p.tokens_per_s, reverse=True)
    result.ranked = fitting[:top_k]
    result.elapsed_s = time.perf_counter() - start
    if not fitting:
        from .fit_advice import no_layout_message
        raise LayoutError(no_layout_message(result, options))
    return result
