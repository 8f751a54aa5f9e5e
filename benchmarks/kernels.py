"""Fused LayerNorm / add+LayerNorm / scaled masked softmax / tanh GELU / cross-entropy / blocked causal attention vs
PyTorch eager, measured in the same run.

For each CPU code path this machine has (avx512, avx2, portable: forced with GPT3D_CPU_ISA), op and shape: the time
of the forward, of the backward alone (each call after a fresh, untimed forward) and of both, the speedup of each
over the PyTorch eager baseline (timed right beside it), and the forward's and the backward's GB/s as a fraction of
the bandwidth of a copy of the same input into a preallocated tensor (read + write), timed in the same rounds as the
forward: the smaller shapes fit this machine's L3 and the copy then runs from L3 as the op does (a 256 MiB copy from
DRAM, printed once per path, is no bound for them). Input gradients are returned, not added into .grad. Bytes are
those the op actually moves: inputs read once, outputs written once; the causal softmax reads only the visible
(lower-triangle) scores and writes the whole row (zeros above the diagonal), and its backward reads dy and y over the
visible part; GELU's backward reads x and dy and writes dx.

    python benchmarks/kernels.py                 # GPT-2-small-like layer shapes, every path of this CPU
    python benchmarks/kernels.py --isa avx2      # one path
    python benchmarks/kernels.py --quick         # smoke run: small shapes, few repeats
    python benchmarks/kernels.py --only causal   # the cases whose name contains "causal"
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import gpt3d.kernels as K
from gpt3d.heap import keep_freed_memory
from gpt3d.profiler.step_floor import copy_bandwidth_gbs


def timed(fn, reps: int, warmup: int = 2) -> float:
    """Fastest wall time of fn() in seconds over `reps` runs (other engineers share this machine's 2 cores: the
    minimum is the estimate least disturbed by other processes)."""
    return timed_pair(fn, None, reps, warmup)[0]


def timed_pair(fn_a, fn_b, reps: int, warmup: int = 2) -> tuple[float, float]:
    """Fastest wall times of fn_a() and fn_b() over `reps` runs each, alternating a, b, a, b, ... so that a burst of
    load from another process hits both sides of the ratio alike (fn_b may be None)."""
    best = timed_alternately([f for f in (fn_a, fn_b) if f is not None], reps, warmup)
    return best[0], (best[1] if fn_b is not None else float("nan"))


def timed_alternately(fns, reps: int, warmup: int = 2) -> list[float]:
    """Fastest wall time of each of fns over `reps` rounds, one call of each per round, in order."""
    for _ in range(warmup):
        for f in fns:
            f()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def as_tuple(outs):
    return outs if isinstance(outs, tuple) else (outs,)


def fwd_bwd(fn, inputs, grads):
    """Forward then backward of fn(*inputs) (outputs a tensor or a tuple) against `grads`. The input gradients are
    returned (torch.autograd.grad), not added into .grad: an accumulation there would add a pass over every input
    to both sides."""
    def run():
        torch.autograd.grad(as_tuple(fn(*inputs)), inputs, grads)
    return run


def timed_backwards(fns, inputs, grads, reps: int, warmup: int = 2) -> list[float]:
    """Fastest wall time of the backward alone of each of fns, alternating as timed_alternately does: every call runs
    a fresh forward first, untimed (a backward may write over what its forward saved: the cross-entropy's does)."""
    best = [float("inf")] * len(fns)
    for i in range(warmup + reps):
        for k, fn in enumerate(fns):
            outs = as_tuple(fn(*inputs))
            t0 = time.perf_counter()
            torch.autograd.grad(outs, inputs, grads)
            if i >= warmup:
                best[k] = min(best[k], time.perf_counter() - t0)
            del outs
    return best


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
            visible = n * (s + 1) / (2 * s)  # bytes of the lower triangle, diagonal included
            yield (f"causal_softmax {bh}x{s}x{s}", dtype, (x,),
                   lambda x: K.scaled_causal_softmax(x, scale),
                   lambda x, causal=causal: torch.softmax((x * scale).masked_fill(causal, float("-inf")), -1),
                   visible + n, visible + n + 2 * visible + n, 1)
            mask = torch.rand(1, 1, s, s) < 0.1
            yield (f"masked_softmax {bh}x{s}x{s}", dtype, (x,),
                   lambda x, mask=mask: K.scaled_masked_softmax(x, mask, scale),  # bind this case's mask
                   lambda x, mask=mask: torch.softmax((x * scale).masked_fill(mask, float("-inf")), -1),
                   2 * n + mask.numel(), 2 * n + mask.numel() + 3 * n, 1)


def gelu_cases(shapes, dtypes):
    for dtype in dtypes:
        for tokens, d_ff in shapes:
            x = torch.randn(tokens, d_ff, dtype=dtype) * 2
            n = x.numel() * x.element_size()
            yield (f"gelu_tanh {tokens}x{d_ff}", dtype, (x,), lambda x: K.gelu_tanh(x),
                   lambda x: F.gelu(x, approximate="tanh"), 2 * n, 2 * n + 3 * n, 1)


def cross_entropy_cases(shapes, dtypes):
    """The LM loss over [tokens, vocab] logits: forward = the row log-sum-exp (gpt3d.kernels.logsumexp_rows against
    torch.logsumexp); forward+backward = gpt3d's loss (gpt3d.model.cross_entropy, its gradient written over the
    logits, which are cloned first here since the benchmark reuses them: one copy more than in training) against
    F.cross_entropy. Bytes: the forward reads the logits; the backward reads and writes them once."""
    from gpt3d.model.cross_entropy import cross_entropy
    for dtype in dtypes:
        for tokens, vocab in shapes:
            x = torch.randn(tokens, vocab, dtype=dtype) * 3
            labels = torch.randint(0, vocab, (tokens,))
            n = x.numel() * x.element_size()

            def ours(x, labels=labels, vocab=vocab):
                if torch.is_grad_enabled():
                    return cross_entropy(x.clone(), labels, vocab, impl="fused")
                return K.logsumexp_rows(x, vocab, impl="fused")

            def eager(x, labels=labels):
                if torch.is_grad_enabled():
                    return F.cross_entropy(x.float(), labels)
                return torch.logsumexp(x.float(), dim=-1)
            yield (f"cross_entropy {tokens}x{vocab}", dtype, (x,), ours, eager, n, n + 2 * n, 1)


def attention_cases(shapes, block: int = 64):
    """Causal attention over fp32 [b, h, s, 64]: gpt3d's blocked explicit core (gpt3d.kernels.block_causal_attention,
    the CPU's model.dense_attention auto up to s 1024, blocks of 64 queries) against torch's fused attention (SDPA,
    is_causal). Bytes, gpt3d's: the forward reads q, k and v and writes the output and the visible probabilities it
    saves (b h (s^2 + s block) / 2 fp32 values); the backward reads the output gradient, q, k, v and those
    probabilities, and writes three input gradients. The op is bound by its GEMMs, so its GB/s is no target."""
    for b, h, s in shapes:
        q = torch.randn(3, b, h, s, 64)
        n = q[0].numel() * q.element_size()
        probs = b * h * (s * s + s * block) // 2 * 4
        fwd_bytes, bwd_bytes = 4 * n + probs, 7 * n + probs
        yield (f"causal_attention {b}x{h}x{s}x64", torch.float32, (q[0], q[1], q[2]),
               lambda q, k, v: K.block_causal_attention(q, k, v, 0.125, impl="fused", block=block),
               lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125),
               fwd_bytes, fwd_bytes + bwd_bytes, 1)


# torch's own CPU kernels are dispatched by ATEN_CPU_CAPABILITY: measuring gpt3d's avx2 path against torch's avx2 kernels
# (and portable against torch's "default") reproduces, on this CPU, the comparison an AVX2-only / older CPU sees.
TORCH_CAPABILITY = {"avx512": "avx512", "avx2": "avx2", "portable": "default"}


def run_isa_in_subprocess(isa: str, argv: list[str]) -> None:
    """Measure one path in a fresh process, with torch's matching capability."""
    env = dict(os.environ, GPT3D_CPU_ISA=isa, ATEN_CPU_CAPABILITY=TORCH_CAPABILITY[isa])
    subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--isa", isa], env=env, check=True)


def argv_without_isa(argv: list[str]) -> list[str]:
    """The command line minus its --isa option (as `--isa X` or `--isa=X`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--isa":
            skip = True
        elif not a.startswith("--isa="):
            out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke run)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--ln-rows", type=int, default=8192,
                   help="LayerNorm rows (e.g. 256 for the small shapes behind the auto table; softmax unchanged; "
                        "--quick uses 1024)")
    p.add_argument("--only", default="", help="measure only the cases whose name contains this text "
                                                "(e.g. layer_norm, causal_softmax, 2048)")
    p.add_argument("--isa", default="all", choices=("all", "avx512", "avx2", "portable"),
                   help="CPU code path(s) to measure, each in its own process against torch at the same capability "
                        "(default: every path this CPU has)")
    args = p.parse_args()
    if not K.fused_available():
        raise SystemExit("gpt3d._C is not built: run `python setup.py build_ext --inplace` first")
    if args.isa == "all":
        print(f"{cpu_model()}; widest path {machine_isas()[0]}; threads={args.threads}")
        argv = argv_without_isa(sys.argv[1:])
        for isa in machine_isas():
            run_isa_in_subprocess(isa, argv)
        return
    if os.environ.get("GPT3D_CPU_ISA") != args.isa or os.environ.get("ATEN_CPU_CAPABILITY") != TORCH_CAPABILITY[args.isa]:
        run_isa_in_subprocess(args.isa, argv_without_isa(sys.argv[1:]))
        return
    # the heap of a gpt3d CPU run (gpt3d/heap.py), eager and fused alike: glibc would otherwise unmap every freed
    # output of 32 MiB or more and each call would pay first-touch page faults, more than some kernels themselves
    malloc = "freed memory kept in the heap" if keep_freed_memory() else "glibc's malloc defaults"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reps = args.reps or (5 if args.quick else 15)
    if args.quick:
        cases = [*layer_norm_cases(1024, (768,), (torch.float32, torch.bfloat16)),
                 *softmax_cases(((4, 256),), (torch.float32,)), *gelu_cases(((512, 2048),), (torch.float32,)),
                 *cross_entropy_cases(((256, 8192),), (torch.float32,))]
    else:
        cases = [*layer_norm_cases(args.ln_rows, (768, 1024, 2048), (torch.float32, torch.bfloat16)),
                 *softmax_cases(((64, 512), (16, 1024), (4, 2048)), (torch.float32, torch.bfloat16)),
                 *gelu_cases(((512, 2048), (2048, 3072)), (torch.float32, torch.bfloat16)),
                 *cross_entropy_cases(((1024, 8192), (512, 50304)), (torch.float32, torch.bfloat16)),
                 *attention_cases(((2, 8, 512), (2, 8, 1024), (1, 8, 2048)))]
    cases = [c for c in cases if args.only in c[0]]
    copy_gbs = copy_bandwidth_gbs((1 << 22) if args.quick else (1 << 26), reps)
    print(f"\ngpt3d path {K.cpu_isa()} vs torch eager at ATEN_CPU_CAPABILITY={torch.backends.cpu.get_cpu_capability()}"
          f"; large-copy bandwidth (copy_ of {4 << (22 if args.quick else 26) >> 20} MiB into a preallocated tensor, "
          f"read+write) = {copy_gbs:.1f} GB/s; copy GB/s per row: the same copy of the case's input; {malloc}")
    print_table(measure(cases, reps))


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_isas() -> list[str]:
    """Every CPU code path this machine can run, widest first."""
    isas = []
    for isa in ("avx512", "avx2"):
        os.environ["GPT3D_CPU_ISA"] = isa
        try:
            K.cpu_isa()
            isas.append(isa)
        except RuntimeError:  # this CPU lacks it
            pass
    os.environ.pop("GPT3D_CPU_ISA")
    return isas + ["portable"]


def measure(cases, reps: int):
    """Per case: the forward (fused and eager) and, in the same rounds, a copy of the case's first input into a
    preallocated tensor: the bandwidth a single pass over those bytes reaches from wherever they are (DRAM, or L3
    for the smaller shapes), which "fwd / copy" divides by."""
    rows = []
    for name, dtype, inputs, fused, eager, fwd_bytes, fb_bytes, n_out in cases:
        source = inputs[0]
        target = torch.empty_like(source)
        with torch.no_grad():
            t_f, t_e, t_copy = timed_alternately(
                [lambda: fused(*inputs), lambda: eager(*inputs), lambda: target.copy_(source)], reps)
        copy_gbs = 2 * source.numel() * source.element_size() / t_copy / 1e9
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        grads = tuple(torch.randn_like(o) for o in as_tuple(fused(*leaves)))
        tb_f, tb_e = timed_pair(fwd_bwd(fused, leaves, grads), fwd_bwd(eager, leaves, grads), reps)
        tg_f, tg_e = timed_backwards([fused, eager], leaves, grads, reps)
        bwd_gbs = (fb_bytes - fwd_bytes) / tg_f / 1e9
        rows.append(dict(name=name, dtype=str(dtype).replace("torch.", ""), copy_gbs=copy_gbs,
                         fwd_ms=t_f * 1e3, fwd_gbs=fwd_bytes / t_f / 1e9, fwd_x=t_e / t_f,
                         bwd_ms=tg_f * 1e3, bwd_gbs=bwd_gbs, bwd_x=tg_e / tg_f,
                         fb_ms=tb_f * 1e3, fb_x=tb_e / tb_f))
    return rows


def print_table(rows) -> None:
    headers = ["op / shape", "dtype", "copy GB/s", "fwd ms", "fwd GB/s", "fwd x eager", "fwd / copy", "bwd ms",
               "bwd GB/s", "bwd x eager", "bwd / copy", "fwd+bwd ms", "fwd+bwd x eager"]
    cells = [[r["name"], r["dtype"], f"{r['copy_gbs']:.1f}", f"{r['fwd_ms']:.2f}", f"{r['fwd_gbs']:.1f}",
              f"{r['fwd_x']:.2f}x", f"{r['fwd_gbs'] / r['copy_gbs']:.0%}", f"{r['bwd_ms']:.2f}", f"{r['bwd_gbs']:.1f}",
              f"{r['bwd_x']:.2f}x", f"{r['bwd_gbs'] / r['copy_gbs']:.0%}", f"{r['fb_ms']:.2f}", f"{r['fb_x']:.2f}x"]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))


if __name__ == "__main__":
    main()
