"""Fused LayerNorm / add+LayerNorm / scaled masked softmax vs PyTorch eager, measured in the same run.

For each op and shape: forward and forward+backward time, achieved GB/s (bytes the op must move: inputs read once,
outputs written once), speedup over the PyTorch eager baseline, and the forward's fraction of the copy bandwidth
(a copy into a preallocated tensor, read + write) measured at the start of the run.

    python benchmarks/kernels.py            # GPT-2-small-like layer shapes
    python benchmarks/kernels.py --quick    # smoke run: small shapes, few repeats
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import gpt3d.kernels as K


def timed(fn, reps: int, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(reps: int, numel: int) -> float:
    """Read + write GB/s of copying into a preallocated tensor (the bound a single-pass kernel can reach)."""
    x, out = torch.randn(numel), torch.empty(numel)
    return 2 * x.numel() * x.element_size() / timed(lambda: out.copy_(x), reps) / 1e9


def fwd_bwd(fn, inputs, grads):
    """Forward then backward of fn(*inputs) (outputs a tensor or a tuple) against `grads`."""
    def run():
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, grads)
    return run


def layer_norm_cases(tokens: int, hiddens, dtypes):
    for dtype in dtypes:
        for hidden in hiddens:
            x = torch.randn(tokens, hidden, dtype=dtype)
            w, b = torch.randn(hidden, dtype=dtype), torch.randn(hidden, dtype=dtype)
            n = x.numel() * x.element_size()
            yield (f"layer_norm {tokens}x{hidden}", dtype, (x, w, b),
                   lambda x, w, b: K.layer_norm(x, w, b, 1e-5),
                   lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
                   2 * n, 2 * n + 3 * n, 1)
            r = torch.randn_like(x)

            def eager_add_ln(x, r, w, b):
                s = x + r
                return s, F.layer_norm(s, (s.shape[-1],), w, b, 1e-5)
            yield (f"add_layer_norm {tokens}x{hidden}", dtype, (x, r, w, b),
                   lambda x, r, w, b: K.add_layer_norm(x, r, w, b, 1e-5), eager_add_ln,
                   4 * n, 4 * n + 4 * n, 2)


def softmax_cases(shapes, dtypes):
    for dtype in dtypes:
        for bh, s in shapes:
            x = torch.randn(1, bh, s, s, dtype=dtype)
            n = x.numel() * x.element_size()
            scale = 0.125
            causal = torch.ones(s, s, dtype=torch.bool).triu(1)
            yield (f"causal_softmax {bh}x{s}x{s}", dtype, (x,),
                   lambda x: K.scaled_causal_softmax(x, scale),
                   lambda x, causal=causal: torch.softmax((x * scale).masked_fill(causal, float("-inf")), -1),
                   2 * n, 2 * n + 3 * n, 1)
            mask = torch.rand(1, 1, s, s) < 0.1
            yield (f"masked_softmax {bh}x{s}x{s}", dtype, (x,),
                   lambda x, mask=mask: K.scaled_masked_softmax(x, mask, scale),  # bind this case's mask
                   lambda x, mask=mask: torch.softmax((x * scale).masked_fill(mask, float("-inf")), -1),
                   2 * n + mask.numel(), 2 * n + mask.numel() + 3 * n, 1)


# glibc returns large freed blocks to the OS and every new output then pays first-touch page faults, which on this
# machine cost more than the kernels themselves (a clone "copies" at ~4 GB/s instead of ~20). Keep freed memory in
# the heap for the whole benchmark, eager and fused alike: re-exec once with these malloc settings.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "68719476736",
              "MALLOC_TOP_PAD_": "1073741824"}


def reexec_with_malloc_env() -> None:
    import os
    import sys
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.environ.update(MALLOC_ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke run)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not K.fused_available():
        raise SystemExit("gpt3d._C is not built: run `python setup.py build_ext --inplace` first")
    reps = args.reps or (3 if args.quick else 10)
    if args.quick:
        cases = [*layer_norm_cases(1024, (768,), (torch.float32, torch.bfloat16)),
                 *softmax_cases(((4, 256),), (torch.float32,))]
    else:
        cases = [*layer_norm_cases(8192, (768, 1024, 2048), (torch.float32, torch.bfloat16)),
                 *softmax_cases(((64, 512), (16, 1024), (4, 2048)), (torch.float32, torch.bfloat16))]
    copy_gbs = copy_bandwidth(reps, (1 << 22) if args.quick else (1 << 26))
    print(f"threads={args.threads}  cpu_isa={K.cpu_isa()}  copy bandwidth (copy_ into a preallocated tensor, read+write) = {copy_gbs:.1f} GB/s")

    rows = []
    for name, dtype, inputs, fused, eager, fwd_bytes, fb_bytes, n_out in cases:
        with torch.no_grad():
            t_f, t_e = timed(lambda: fused(*inputs), reps), timed(lambda: eager(*inputs), reps)
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        outs = fused(*leaves)
        grads = tuple(torch.randn_like(o) for o in (outs if isinstance(outs, tuple) else (outs,)))
        tb_f = timed(fwd_bwd(fused, leaves, grads), reps)
        tb_e = timed(fwd_bwd(eager, leaves, grads), reps)
        rows.append((name, str(dtype).replace("torch.", ""), t_f, fwd_bytes / t_f / 1e9, t_e / t_f,
                     fwd_bytes / t_f / 1e9 / copy_gbs, tb_f, fb_bytes / tb_f / 1e9, tb_e / tb_f))
    print_table(rows, copy_gbs)


def print_table(rows, copy_gbs: float) -> None:
    headers = ["op / shape", "dtype", "fwd ms", "fwd GB/s", "fwd x eager", "fwd / copy", "fwd+bwd ms",
               "fwd+bwd GB/s", "fwd+bwd x eager"]
    cells = [[r[0], r[1], f"{r[2] * 1e3:.2f}", f"{r[3]:.1f}", f"{r[4]:.2f}x", f"{r[5] * 100:.0f}%",
              f"{r[6] * 1e3:.2f}", f"{r[7]:.1f}", f"{r[8]:.2f}x"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))


if __name__ == "__main__":
    reexec_with_malloc_env()
    main()
