"""The time a training step spends in its linear layers' GEMMs, from a torch.profiler trace.

A CPU step of a small GPT is mostly these GEMMs: every layer's QKV, output, fc1 and fc2 projections and the output
head, forward and both gradients. Two frameworks that hand the same shapes to the same GEMM library spend the same
time in them, so that time bounds how much faster one step can be than the other: if everything else took no time,
the faster one would be at most (the other's step time) / (its own GEMM time). The benchmarks print that ceiling next
to the measured ratio, so a missed target can be told apart from a slow kernel.

Which GEMMs count: the `aten::mm`, `aten::addmm` and `aten::addmm_` calls (and oneDNN's `mkldnn::_linear_pointwise`,
x W^T, which gpt3d's fp32 linears call where oneDNN is the faster library: gpt3d/model/gemm.py) whose product is
[m, k] @ [k, n] with one of
m, k, n the step's token count (micro-batch x sequence) and the other two layer widths the caller names (d_model,
3 d_model, d_ff, the vocabulary, each as one rank holds it). Attention's GEMMs are per head, so the head size is one of
their dimensions and they are left out, as is every GEMM inside a fused attention kernel: on every side alike.
"""
from __future__ import annotations

from typing import Iterable

LINEAR_GEMM_OPS = {"aten::mm": 0, "aten::addmm": 1, "aten::addmm_": 1}  # op: position of its first factor
ONEDNN_LINEAR = "mkldnn::_linear_pointwise"  # (x [..., k], weight [n, k], bias, ...): x W^T


def _product_dims(name: str, shapes: list) -> list[int] | None:
    """[m, k, n] of the op's product, or None where it is not a GEMM of two matrices."""
    if name == ONEDNN_LINEAR:
        if len(shapes) < 2 or len(shapes[0]) < 2 or len(shapes[1]) != 2 or shapes[0][-1] != shapes[1][1]:
            return None
        m = 1
        for size in shapes[0][:-1]:
            m *= size
        return [m, shapes[0][-1], shapes[1][0]]
    first = LINEAR_GEMM_OPS.get(name)  # mm(a, b[, out]); addmm(_)(added, a, b, ...)
    if first is None or len(shapes) < first + 2:
        return None
    a, b = shapes[first], shapes[first + 1]
    if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        return None
    (m, k), n = a, b[1]
    return [m, k, n]


def is_linear_gemm(name: str, input_shapes: Iterable, tokens: int, widths: frozenset[int] | set[int]) -> bool:
    """Whether a profiled op (its name and recorded input shapes) is a linear layer's or the head's GEMM over
    `tokens` tokens: see the module's docstring."""
    dims = _product_dims(name, [list(shape) for shape in input_shapes if isinstance(shape, (list, tuple))])
    if dims is None:
        return False
    if tokens not in dims:
        return False
    dims.remove(tokens)
    return all(d in widths for d in dims)


def linear_gemm_seconds(profile, tokens: int, widths: Iterable[int]) -> float:
    """Self CPU seconds of the linear-layer GEMMs in a finished torch.profiler.profile (record_shapes=True)."""
    if tokens <= 0:
        raise ValueError(f"tokens must be positive (micro-batch x sequence), got {tokens}")
    widths = frozenset(widths)
    total_us = 0.0
    for event in profile.key_averages(group_by_input_shape=True):
        if is_linear_gemm(event.key, event.input_shapes, tokens, widths):
            total_us += event.self_cpu_time_total
    return total_us / 1e6
