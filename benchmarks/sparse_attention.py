"""Benchmark: gpt3d block-sparse attention vs dense causal SDPA and compiled FlexAttention, measured in one run.

    python benchmarks/sparse_attention.py            # T in {1024, 4096, 8192}, heads 8, head dim 64, block 64
    python benchmarks/sparse_attention.py --quick    # T in {1024, 2048}, fewer repetitions, no FlexAttention

Layout: GPT-3's sparse layers as the Sparse Transformer "fixed" pattern: windows of 4 blocks (local band) plus 1 summary
block per window, causal. Time = median wall time of `--reps` runs after a warm-up, fp32, batch 1.
FlexAttention gets the same mask (mask_mod = layout lookup & causal, BlockMask with the same block size) and is
torch.compile'd; on CPU its backward raises, so it is compared on the forward only.

Peak memory: each (impl, T) runs forward+backward in a fresh subprocess with MALLOC_MMAP_THRESHOLD_ fixed (so large
buffers are mmapped and returned to the OS when freed); after a warm-up the process resets its peak RSS
(`5 > /proc/self/clear_refs`), runs the step once and reports VmHWM - VmRSS-before: the extra memory the step needs
beyond its inputs. Linux only (elsewhere the column shows "n/a").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.kernels import _ext
from gpt3d.kernels.sparse_attention import block_sparse_attention, compile_layout
from gpt3d.sparse.layout import layout_density, make_layout


def _layout(heads: int, seq: int, block: int) -> torch.Tensor:
    cfg = SparseAttentionConfig(layout="fixed", block=block, num_local_blocks=4, num_global_blocks=1)
    return make_layout(cfg, heads, seq)


def _inputs(heads: int, seq: int, dim: int, grad: bool):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, heads, seq, dim, generator=gen).requires_grad_(grad) for _ in range(3)]


def _step(impl: str, layout, block: int, backward: bool):
    """A callable running one forward (and backward) of `impl` on given q, k, v."""
    def run(q, k, v):
        with torch.set_grad_enabled(backward):
            if impl == "sparse":
                out = block_sparse_attention(q, k, v, layout, block)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if backward:
                out.backward(torch.ones_like(out))
        return out
    return run


def _median_ms(fn, args, reps: int) -> float:
    fn(*args)  # warm-up (and compilation)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _flex_forward(layout: torch.Tensor, block: int, seq: int, heads: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        return layout[h, q_idx // block, kv_idx // block] & (q_idx >= kv_idx)

    block_mask = create_block_mask(mask_mod, 1, heads, seq, seq, device="cpu", BLOCK_SIZE=block)
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def _peak_memory_child(impl: str, heads: int, seq: int, dim: int, block: int) -> None:
    """Subprocess body: print the extra peak RSS (bytes) of one forward+backward step."""
    layout = compile_layout(_layout(heads, seq, block), block)
    q, k, v = _inputs(heads, seq, dim, grad=True)
    step = _step(impl, layout, block, backward=True)
    step(q, k, v)
    for t in (q, k, v):
        t.grad = None

    def status(field: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} missing from /proc/self/status")

    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    step(q, k, v)
    print(json.dumps({"peak_extra": status("VmHWM:") - before}))


def _peak_memory_mib(impl: str, heads: int, seq: int, dim: int, block: int) -> str:
    if not sys.platform.startswith("linux"):
        return "n/a"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--child-memory", impl, str(heads), str(seq), str(dim), str(block)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"memory subprocess for {impl} T={seq} failed:\n{result.stderr}")
    return f"{json.loads(result.stdout.strip().splitlines()[-1])['peak_extra'] / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T in {1024, 2048}, 2 repetitions, no FlexAttention")
    parser.add_argument("--seq", type=int, nargs="+", help="sequence lengths (default 1024 4096 8192)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=64, choices=(16, 32, 64))
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3, quick 2)")
    parser.add_argument("--no-flex", action="store_true", help="skip compiled FlexAttention")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--child-memory", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        impl, heads, seq, dim, block = args.child_memory
        _peak_memory_child(impl, int(heads), int(seq), int(dim), int(block))
        return
    if not _ext.has_op("sparse_attention_forward"):
        sys.exit("gpt3d._C is not built (the benchmark would time the reference); run: python setup.py build_ext "
                 "--inplace")
    seqs = args.seq or ([1024, 2048] if args.quick else [1024, 4096, 8192])
    reps = args.reps or (2 if args.quick else 3)
    use_flex = not (args.quick or args.no_flex)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu kernel "
          f"{torch.ops.gpt3d_C.sparse_attention_cpu_isa()}, heads {args.heads}, head dim {args.dim}, "
          f"block {args.block}, fixed layout (4 local blocks + 1 summary per window), fp32, batch 1, median of {reps}")
    header = (f"{'T':>6} {'density':>8} {'impl':>12} {'fwd ms':>9} {'fwd x':>7} {'fwd+bwd ms':>11} {'f+b x':>7} "
              f"{'target x':>9} {'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    for seq in seqs:
        raw = _layout(args.heads, seq, args.block)
        density = layout_density(raw, args.block)
        layout = compile_layout(raw, args.block)
        q, k, v = _inputs(args.heads, seq, args.dim, grad=True)
        with torch.no_grad():
            fwd = {name: _median_ms(_step(name, layout, args.block, False), (q, k, v), reps)
                   for name in ("sdpa", "sparse")}
        fwdbwd = {name: _median_ms(_step(name, layout, args.block, True), (q, k, v), reps)
                  for name in ("sdpa", "sparse")}
        memory = {name: ("-" if args.no_memory else _peak_memory_mib(name, args.heads, seq, args.dim, args.block))
                  for name in ("sdpa", "sparse")}
        rows = [("sdpa dense", fwd["sdpa"], fwdbwd["sdpa"], memory["sdpa"]),
                ("gpt3d sparse", fwd["sparse"], fwdbwd["sparse"], memory["sparse"])]
        if use_flex:
            with torch.no_grad():
                detached = tuple(t.detach() for t in (q, k, v))  # flex refuses inputs requiring grad on CPU
                flex_ms = _median_ms(_flex_forward(raw, args.block, seq, args.heads), detached, reps)
            rows.append(("flex (fwd)", flex_ms, None, "-"))
        target = 0.6 / density
        for name, f_ms, fb_ms, mem in rows:
            fb = f"{fb_ms:11.1f}" if fb_ms is not None else f"{'-':>11}"
            fbx = f"{fwdbwd['sdpa'] / fb_ms:7.2f}" if fb_ms is not None else f"{'-':>7}"
            tgt = f"{target:9.2f}" if name == "gpt3d sparse" else f"{'':>9}"
            print(f"{seq:>6} {density:8.3f} {name:>12} {f_ms:9.1f} {fwd['sdpa'] / f_ms:7.2f} {fb} {fbx} {tgt} "
                  f"{mem:>9}")
        if use_flex:
            print(f"{'':>6} {'':>8} {'':>12} sparse fwd vs flex fwd: {rows[2][1] / fwd['sparse']:.2f}x")
        sys.stdout.flush()
    print("x = speed-up over dense causal SDPA measured above (>1 is faster); target x = 0.6 / density for fwd+bwd; "
          "peak MiB = extra peak RSS of one forward+backward step (see the module docstring)")


if __name__ == "__main__":
    main()
