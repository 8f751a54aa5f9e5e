"""GPU kernel benchmarks: gpt3d's fused CUDA kernels against torch eager, torch.compile and (sparse attention) flash
scaled_dot_product_attention, all measured in this run on the same inputs, in bf16.

    python -m tests.gpu.bench_kernels           # on a GPU machine (run.sh calls it)
    python -m tests.gpu.bench_kernels --list    # the benchmarks it would run (no GPU needed)

Each row: median time over CUDA-event-timed repeats after warm-up, achieved GB/s (memory-bound ops: the bytes the op
must read and write once) or TFLOP/s (attention: the FLOPs of the kept causal pairs), and the ratio baseline time /
gpt3d time (> 1: gpt3d is faster). The device-to-device copy bandwidth is measured first as the memory roof.
Baselines run at their best: torch's native fused LayerNorm / softmax kernels in eager, the same functions under
torch.compile, and flash attention for the dense causal attention the sparse kernel replaces.
"""
from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .records import record

BENCHMARKS = [
    "copy (memory roof)",
    "layer_norm fwd [8192 x 12288]",
    "add_layer_norm fwd [8192 x 12288]",
    "scaled_masked_softmax fwd [1 x 96 x 2048 x 2048]",
    "scaled_causal_softmax fwd [1 x 96 x 2048 x 2048]",
    "block_sparse_attention fwd+bwd [1 x 32 x 8192 x 128], fixed layout, block 64",
]


def time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 10) -> float:
    """Median milliseconds of fn() over `reps` CUDA-event-timed calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@dataclass
class Row:
    bench: str
    impl: str
    ms: float
    rate: float       # GB/s or TFLOP/s
    unit: str
    gpt3d_ms: float   # gpt3d's time on the same benchmark

    def emit(self, roof_gbs: float | None = None) -> None:
        extra = {"pct_of_copy_bw": 100 * self.rate / roof_gbs} if roof_gbs and self.unit == "GB/s" else {}
        record("bench", bench=self.bench, impl=self.impl, ms=self.ms, rate=self.rate, unit=self.unit,
               speedup_of_gpt3d=self.ms / self.gpt3d_ms, **extra)


def compare(bench: str, impls: dict[str, Callable[[], object]], amount: float | dict[str, float], unit: str,
            roof: float | None, reps: int = 10) -> None:
    """Time every implementation (gpt3d first); `amount` is the bytes (GB/s) or FLOPs (TFLOP/s) of one call, one
    number for all or one per implementation."""
    scale = 1e9 if unit == "GB/s" else 1e12
    times = {name: time_ms(fn, reps=reps) for name, fn in impls.items()}
    for name, ms in times.items():
        work = amount[name] if isinstance(amount, dict) else amount
        Row(bench, name, ms, work / (ms / 1e3) / scale, unit, times["gpt3d"]).emit(roof)


def copy_roof() -> float:
    x = torch.empty(1 << 30, dtype=torch.float32, device="cuda")  # 4 GiB, far beyond the L2
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x))
    gbs = 2 * x.numel() * 4 / (ms / 1e3) / 1e9
    record("bench", bench=BENCHMARKS[0], impl="torch copy_", ms=ms, rate=gbs, unit="GB/s", speedup_of_gpt3d=None)
    del x, y
    return gbs


def bench_layer_norm(roof: float) -> None:
    from gpt3d import kernels
    x = torch.randn(8192, 12288, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w, b = torch.ones(12288, device="cuda", dtype=torch.bfloat16), torch.zeros(12288, device="cuda",
                                                                                 dtype=torch.bfloat16)
    eager = lambda: F.layer_norm(x, (12288,), w, b, 1e-5)  # noqa: E731
    compiled = torch.compile(lambda x, w, b: F.layer_norm(x, (12288,), w, b, 1e-5))
    with torch.no_grad():
        compare(BENCHMARKS[1], {"gpt3d": lambda: kernels.layer_norm(x, w, b, 1e-5), "torch eager": eager,
                                "torch.compile": lambda: compiled(x, w, b)}, 2 * x.numel() * 2, "GB/s", roof)

        def add_eager():
            total = x + r
            return total, F.layer_norm(total, (12288,), w, b, 1e-5)

        add_compiled = torch.compile(lambda x, r, w, b: (x + r, F.layer_norm(x + r, (12288,), w, b, 1e-5)))
        compare(BENCHMARKS[2], {"gpt3d": lambda: kernels.add_layer_norm(x, r, w, b, 1e-5), "torch eager": add_eager,
                                "torch.compile": lambda: add_compiled(x, r, w, b)}, 4 * x.numel() * 2, "GB/s", roof)


def bench_softmax(roof: float) -> None:
    from gpt3d import kernels
    x = torch.randn(1, 96, 2048, 2048, device="cuda", dtype=torch.bfloat16)
    scale = 1 / math.sqrt(128)
    mask = torch.rand(1, 1, 2048, 2048, device="cuda") < 0.1
    causal = torch.ones(2048, 2048, dtype=torch.bool, device="cuda").triu(1)

    def masked_softmax(x, mask):
        return torch.softmax((x * scale).masked_fill(mask, float("-inf")), dim=-1)

    compiled = torch.compile(masked_softmax)
    nbytes = 2 * x.numel() * 2
    with torch.no_grad():
        compare(BENCHMARKS[3], {"gpt3d": lambda: kernels.scaled_masked_softmax(x, mask, scale),
                                "torch eager": lambda: masked_softmax(x, mask),
                                "torch.compile": lambda: compiled(x, mask)}, nbytes, "GB/s", roof)
        compare(BENCHMARKS[4], {"gpt3d": lambda: kernels.scaled_causal_softmax(x, scale),
                                "torch eager": lambda: masked_softmax(x, causal),
                                "torch.compile": lambda: compiled(x, causal)}, nbytes, "GB/s", roof)


def bench_sparse_attention() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gpt3d.config.sparse import SparseAttentionConfig
    from gpt3d.kernels.sparse_attention import block_sparse_attention, compile_layout
    from gpt3d.sparse.layout import expand_layout_to_mask, layout_density, make_layout

    heads, seq, d_head, block = 32, 8192, 128, 64
    layout = make_layout(SparseAttentionConfig(layout="fixed", block=block), heads, seq)
    density = layout_density(layout, block)
    compiled_layout = compile_layout(layout, block, "cuda")
    q, k, v = (torch.randn(1, heads, seq, d_head, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    dout = torch.randn_like(q)
    mask = expand_layout_to_mask(layout.cuda(), block, seq)[None]

    def fwd_bwd(attend):
        def run():
            out = attend()
            torch.autograd.grad(out, (q, k, v), dout)
        return run

    def dense_masked(q, k, v):
        s = torch.matmul(q, k.transpose(-1, -2)) * (1 / math.sqrt(d_head))
        return torch.matmul(torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1), v)

    compiled_dense = torch.compile(dense_masked)

    def flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    # Useful FLOPs, forward + backward (3.5x the forward's QK^T and PV): the kept causal pairs for the sparse kernel,
    # all causal pairs for flash, all pairs for the dense masked baselines (they compute every score).
    causal_flops = 3.5 * 4 * heads * seq * (seq + 1) / 2 * d_head
    impls = {"gpt3d": fwd_bwd(lambda: block_sparse_attention(q, k, v, compiled_layout, block)),
             "torch eager (dense masked)": fwd_bwd(lambda: dense_masked(q, k, v)),
             "torch.compile (dense masked)": fwd_bwd(lambda: compiled_dense(q, k, v)),
             "flash SDPA (dense causal)": fwd_bwd(flash)}
    dense_flops = 3.5 * 4 * heads * seq * seq * d_head
    flops = {"gpt3d": density * causal_flops, "flash SDPA (dense causal)": causal_flops,
             "torch eager (dense masked)": dense_flops, "torch.compile (dense masked)": dense_flops}
    compare(BENCHMARKS[5], impls, flops, "TFLOP/s", None, reps=5)
    record("bench_note", bench=BENCHMARKS[5], density=density, flash_target_speedup=0.6 / density)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the benchmarks and exit (no GPU needed)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(BENCHMARKS))
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels: no CUDA device visible; run it on a GPU machine (bash tests/gpu/run.sh)")
    torch.manual_seed(0)
    roof = copy_roof()
    bench_layer_norm(roof)
    torch.cuda.empty_cache()
    bench_softmax(roof)
    torch.cuda.empty_cache()
    bench_sparse_attention()


if __name__ == "__main__":
    main()
