"""Clear errors for layouts that do not divide or do not fit, each saying what would fit instead."""
from __future__ import annotations

from typing import Optional

from gpt3d.config.model import ModelConfig

from .hardware import GiB, GPUSpec, get_gpu
from .layout import Layout, divisibility_problems
from .memory import LayoutError, MemoryBreakdown, estimate_memory, usable_bytes

MAX_GPU_SEARCH_FACTOR = 64
"""How far beyond the requested GPU count the minimum-GPU search looks (x num_gpus)."""


def layout_memory(model: ModelConfig, layout: Layout, global_batch: int, seq_len: int, dtype: str) -> MemoryBreakdown:
    return estimate_memory(model, layout.tp, layout.pp, layout.dp, layout.vp, layout.micro_batch, seq_len,
                           layout.num_microbatches(global_batch), layout.sequence_parallel, layout.recompute,
                           layout.distributed_optimizer, dtype, layout.schedule)


def _fits(model: ModelConfig, layout: Layout, num_gpus: int, global_batch: int, seq_len: int, dtype: str,
          gpu: GPUSpec) -> Optional[MemoryBreakdown]:
    """The memory when `layout` divides and fits, else None."""
    if divisibility_problems(model, layout, num_gpus, global_batch, seq_len):
        return None
    memory = layout_memory(model, layout, global_batch, seq_len, dtype)
    return memory if memory.total <= usable_bytes(gpu) else None


def _frugal_layouts(model: ModelConfig, num_gpus: int, gpus_per_node: int):
    """The most memory-saving layouts on `num_gpus` GPUs: full recomputation, distributed optimizer, sequence
    parallel, micro-batch 1, any tp within a node and any pp."""
    for tp in [t for t in range(1, gpus_per_node + 1) if num_gpus % t == 0]:
        for pp in [p for p in range(1, min(model.n_layers, num_gpus // tp) + 1) if (num_gpus // tp) % p == 0]:
            dp = num_gpus // (tp * pp)
            yield Layout(tp=tp, pp=pp, dp=dp, micro_batch=1, sequence_parallel=tp > 1, recompute="full",
                         distributed_optimizer=dp > 1)


def minimum_gpus(model: ModelConfig, gpu: GPUSpec, num_gpus: int, global_batch: int, seq_len: int, dtype: str,
                 gpus_per_node: int) -> Optional[tuple[int, Layout, MemoryBreakdown]]:
    """The smallest GPU count (1..gpus_per_node, then whole nodes, up to MAX_GPU_SEARCH_FACTOR x num_gpus) with a
    layout that divides and fits."""
    counts = list(range(1, gpus_per_node)) + list(
        range(gpus_per_node, max(num_gpus, gpus_per_node) * MAX_GPU_SEARCH_FACTOR + 1, gpus_per_node))
    for count in counts:
        best = None
        for layout in _frugal_layouts(model, count, gpus_per_node):
            memory = _fits(model, layout, count, global_batch, seq_len, dtype, gpu)
            if memory is not None and (best is None or memory.total < best[2].total):
                best = (count, layout, memory)
        if best is not None:
            return best
    return None


def no_layout_message(result, options) -> str:
    """Why no layout of a search survived, and the smallest change that would make one work."""
    lines = [f"no layout of {result.model.n_layers} layers x d_model {result.model.d_model} on {result.num_gpus} "
             f"{result.gpu.name} GPUs (global batch {result.global_batch}, seq {result.seq_len}) both divides and fits:"]
    for group in result.discarded.values():
        example = group.closest or group.example
        lines.append(f"  {group.reason}: {group.count} layouts, e.g. {example}")
    found = minimum_gpus(result.model, result.gpu, result.num_gpus, result.global_batch, result.seq_len,
                         options.dtype, options.gpus_per_node)
    if found is None:
        lines.append(f"  nothing fits up to {result.num_gpus * MAX_GPU_SEARCH_FACTOR} GPUs: change the global batch "
                     f"(a multiple of many data-parallel sizes, e.g. a power of two) or the model")
    else:
        count, layout, memory = found
        lines.append(f"  smallest cluster that works: {count} GPUs, e.g. {layout.label()} ({memory.total / GiB:.1f} GiB "
                     f"per GPU)")
    return "\n".join(lines)


def suggestions(model: ModelConfig, layout: Layout, num_gpus: int, global_batch: int, seq_len: int, dtype: str,
                 gpu: GPUSpec, gpus_per_node: int) -> list[str]:
    """Single changes to `layout` that make it fit, with the memory each needs."""
    out = []

    def attempt(text: str, candidate: Layout) -> bool:
        memory = _fits(model, candidate, num_gpus, global_batch, seq_len, dtype, gpu)
        if memory is not None:
            out.append(f"{text} ({memory.total / GiB:.1f} GiB)")
        return memory is not None

    changes = layout.to_dict()
    for mode in ("selective", "full"):
        if ("none", "selective", "full").index(mode) > ("none", "selective", "full").index(layout.recompute):
            if attempt(f"recompute={mode}", Layout(**{**changes, "recompute": mode})):
                break
    if layout.dp > 1 and not layout.distributed_optimizer:
        attempt("distributed_optimizer=true", Layout(**{**changes, "distributed_optimizer": True}))
    if layout.tp > 1 and not layout.sequence_parallel:
        attempt("sequence_parallel=true", Layout(**{**changes, "sequence_parallel": True}))
    for mb in range(layout.micro_batch - 1, 0, -1):
        if attempt(f"micro_batch={mb} (the largest that fits)", Layout(**{**changes, "micro_batch": mb})):
            break
    for pp in range(layout.pp + 1, model.n_layers + 1):
        if num_gpus % (layout.tp * pp) == 0:
            dp = num_gpus // (layout.tp * pp)
            if attempt(f"pp={pp} (dp={dp})", Layout(**{**changes, "pp": pp, "dp": dp})):
                break
    for tp in range(layout.tp + 1, gpus_per_node + 1):
        if num_gpus % (tp * layout.pp) == 0:
            dp = num_gpus // (tp * layout.pp)
            if attempt(f"tp={tp} (dp={dp})", Layout(**{**changes, "tp": tp, "dp": dp})):
                break
    return out


def check_fits(run, gpu_name: str, num_gpus: int, gpus_per_node: int = 8) -> MemoryBreakdown:
    """Memory of `run`'s layout on `num_gpus` GPUs of type `gpu_name`; LayoutError (with the numbers and what would
    fit) when the layout does not divide or does not fit. Called before submitting a job."""
    try:
        gpu = get_gpu(gpu_name)
    except ValueError as exc:
        raise LayoutError(str(exc)) from None
    if num_gpus < 1:
        raise LayoutError(f"num_gpus must be >= 1, got {num_gpus}")
    model, par, train = run.model, run.parallel, run.train
    replica = par.tp * par.pp
    if num_gpus % replica:
        lower, upper = (num_gpus // replica) * replica, (num_gpus // replica + 1) * replica
        options = f"{lower} or {upper}" if lower else f"{upper}"
        raise LayoutError(f"tp{par.tp}*pp{par.pp} needs a multiple of {replica} GPUs to divide into data-parallel "
                          f"replicas; {num_gpus} is not (use {options} GPUs, or change parallel.tp/pp)")
    dp = par.dp if par.dp is not None else num_gpus // replica
    layout = Layout(tp=par.tp, pp=par.pp, dp=dp, vp=par.vp, micro_batch=train.micro_batch_size,
                    sequence_parallel=par.sequence_parallel and par.tp > 1, recompute=par.recompute,
                    distributed_optimizer=par.distributed_optimizer, schedule=par.schedule)
    seq_len = train.seq_len or model.seq_len
    problems = divisibility_problems(model, layout, num_gpus, train.global_batch_size, seq_len,
                                     check_layers=par.pipeline_split is None)
    if problems:
        hint = ""
        if any(p.kind == "micro_batch*dp does not divide the global batch" for p in problems):
            step = train.micro_batch_size * dp
            hint = (f"; use a global batch that is a multiple of {step} (e.g. "
                    f"{max(step, train.global_batch_size // step * step)} or "
                    f"{(train.global_batch_size // step + 1) * step}) or change micro_batch/dp")
        raise LayoutError(f"{layout.label()} on {num_gpus} GPUs does not divide: "
                          + "; ".join(p.message for p in problems) + hint)
    memory = layout_memory(model, layout, train.global_batch_size, seq_len, train.dtype)
    capacity = usable_bytes(gpu)
    if memory.total > capacity:
        fixes = suggestions(model, layout, num_gpus, train.global_batch_size, seq_len, train.dtype, gpu,
                             gpus_per_node)
        if fixes:
            advice = "try " + " or ".join(fixes)
        else:
            found = minimum_gpus(model, gpu, num_gpus, train.global_batch_size, seq_len, train.dtype, gpus_per_node)
            advice = ("no single change fits on this many GPUs; " +
                      (f"the smallest that fits is {found[0]} GPUs ({found[1].label()}, "
                       f"{found[2].total / GiB:.1f} GiB)" if found else "nothing fits within "
                       f"{num_gpus * MAX_GPU_SEARCH_FACTOR} GPUs"))
        raise LayoutError(f"{layout.label()} needs {memory.describe()} but {gpu.name} has "
                          f"{gpu.memory_bytes / GiB:.0f} GiB ({capacity / GiB:.1f} GiB usable after the CUDA context "
                          f"and allocator fragmentation); {advice}")
    return memory
