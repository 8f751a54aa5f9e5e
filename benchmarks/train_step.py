"""One training step of gpt3d versus Hugging Face GPT2LMHeadModel on the same config, batch and dtype.

Both run forward + backward + grad clipping + AdamW on one process with the same threads. The baseline is Hugging Face
at its best settings on CPU: SDPA attention, GELU by torch's fused tanh kernel (gelu_pytorch_tanh: GPT-2's default
gelu_new computes the same function in eight eager ops), torch.optim.AdamW(fused=True) (one fused kernel over all tensors; the
default foreach/for-loop AdamW is slower), bf16 via autocast. gpt3d runs with model.kernels auto, fused and reference
(the fused kernels must never make the step slower). Printed per dtype: step time, tokens/s, model TFLOP/s, MFU against
the hardware peak (cores x clock x FLOPs/cycle, gpt3d/profiler/cpu_peak.py), the fraction of a GEMM rate measured in
the same run ("of GEMM", not an MFU), the speed ratio over Hugging Face, and over gpt3d with the reference kernels
(fused / auto must be >= 1.00x there). In bf16 a fifth run, "gpt3d bf16 GEMM", is gpt3d auto with
model.bf16_matmul=bf16 (torch's bf16 GEMMs), to show what auto's choice of GEMM (gpt3d/model/linear.py) is worth. In
fp32, where gpt3d's fp32 GEMMs go to oneDNN (gpt3d/model/gemm.py: AMD CPUs with AVX-512, where MKL runs its non-Intel
path), "gpt3d torch GEMM" is gpt3d auto with torch's own fp32 GEMM, the one Hugging Face runs: the library's share
of the ratio. "of GEMM" is against the fastest GEMM route measured. Last per dtype: the least time over three more (profiled) steps
of gpt3d auto and of Hugging Face spends in the linear layers' and the head's GEMMs, and Hugging Face's step time over
gpt3d's: how far ahead gpt3d could be if nothing but those GEMMs took time (gpt3d/profiler/gemm_floor.py); then a
tighter floor of gpt3d's step, those GEMMs plus the causal attention core's GEMMs at the best measured GEMM rate plus
the bytes the loss and AdamW must move at the copy bandwidth measured at start (gpt3d/profiler/step_floor.py). Every run
shares this process and so its malloc settings: gpt3d's CPU runtime keeps freed memory in the heap (gpt3d/heap.py),
applied here before any run, so that Hugging Face's step reuses its pages too (GPT3D_MALLOC=system runs both with
glibc's defaults). Usage:
    python benchmarks/train_step.py [--layers 6 --d-model 512 --heads 8 --seq 512 --batch 4 --steps 9 --quick]
                                    [--dtype fp32|bf16|both]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch

from gpt3d.config import load_config
from gpt3d.heap import keep_freed_memory
from gpt3d.model import gemm
from gpt3d.model.flops import megatron_model_flops
from gpt3d.profiler.gemm_floor import linear_gemm_seconds
from gpt3d.profiler.cpu_peak import cpu_peak_tflops
from gpt3d.profiler.step_floor import (adamw_bytes, causal_attention_gemm_flops, copy_bandwidth_gbs, loss_bytes,
                                       step_floor)
from gpt3d.train.runtime import init_runtime
from gpt3d.train.trainer import Trainer


HF_VOCAB = 50257  # GPT-2's; gpt3d pads it to a multiple of 128 (50304), as Megatron-LM does
ROUNDS = 3  # alternate gpt3d and HF rounds; each side's best round median is reported (a shared machine is noisy)
PROFILED_STEPS = 3  # steps profiled for each side's GEMM time; the least is reported


def gemm_peak_tflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> tuple[float, str]:
    """(the best measured n x n GEMM rate of the routes this machine offers for `dtype`, its name): a reference point,
    not a hardware peak. The routes: torch's GEMM, and gpt3d's fp32 library (gpt3d/model/gemm.py) on fp32 operands or
    on bf16 ones cast to fp32 (model.bf16_matmul's fp32 route)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    routes = {f"torch {str(dtype).replace('torch.', '')} GEMM": lambda: torch.mm(a, b)}
    if dtype == torch.float32 and gemm.fp32_gemm_library() != "torch":
        routes[f"{gemm.fp32_gemm_library()} float32 GEMM"] = lambda: gemm.mm(a, b)
    if dtype == torch.bfloat16:
        routes[f"{gemm.fp32_gemm_library()} float32 GEMM on casts"] = lambda: gemm.mm(a.float(), b.float()).to(dtype)
    rates = {}
    for name, run in routes.items():
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        rates[name] = 2 * n ** 3 / min(times) / 1e12
    best = max(rates, key=rates.get)
    return rates[best], best


def with_fp32_gemm(library: str, step):
    """`step` run with GPT3D_FP32_GEMM=`library` (gpt3d/model/gemm.py reads it once per process: re-read around)."""
    def run():
        old = os.environ.get("GPT3D_FP32_GEMM")
        os.environ["GPT3D_FP32_GEMM"] = library
        gemm.fp32_gemm_library.cache_clear()
        try:
            step()
        finally:
            if old is None:
                del os.environ["GPT3D_FP32_GEMM"]
            else:
                os.environ["GPT3D_FP32_GEMM"] = old
            gemm.fp32_gemm_library.cache_clear()
    return run


def profiled_linear_gemm_seconds(step, tokens: int, widths: set[int]) -> float:
    """Seconds a step spends in its linear layers' GEMMs (torch.profiler; gpt3d/profiler/gemm_floor.py): the least
    of PROFILED_STEPS steps, each profiled alone (one step's figure moved by up to 10% between runs)."""
    seconds = []
    for _ in range(PROFILED_STEPS):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
            step()
        seconds.append(linear_gemm_seconds(profile, tokens, widths))
    return min(seconds)


def time_steps(step, steps: int) -> float:
    step()  # warm-up (allocations, first-call costs)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpt3d_step_fn(args, dtype: str, batch: np.ndarray, kernels: str, bf16_matmul: str = "auto"):
    cfg = load_config(None, ["preset=gpt2-small", f"model.kernels={kernels}", f"model.bf16_matmul={bf16_matmul}", f"model.n_layers={args.layers}", f"model.d_model={args.d_model}",
                             f"model.n_heads={args.heads}", f"model.seq_len={args.seq}", "model.hidden_dropout=0.0",
                             "model.attn_dropout=0.0", f"train.global_batch_size={args.batch}",
                             f"train.micro_batch_size={args.batch}", f"train.dtype={dtype}", "optim.grad_clip=1.0",
                             f"train.steps={args.steps + 1}"])
    trainer = Trainer(cfg, init_runtime(cfg, 0, 1, 0, 1))
    return cfg, lambda: trainer.train_step(batch), trainer


def parameter_count(trainer: Trainer) -> int:
    """The model's distinct parameters (the tied head counted once): what AdamW updates."""
    return sum(p.numel() for p in {id(p): p for chunk in trainer.chunks for p in chunk.parameters()}.values())


def hf_step_fn(args, dtype: str, batch: np.ndarray):
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(n_layer=args.layers, n_embd=args.d_model, n_head=args.heads, n_positions=args.seq,
                        vocab_size=HF_VOCAB, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        attn_implementation="sdpa", activation_function="gelu_pytorch_tanh")
    model = GPT2LMHeadModel(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    tokens = torch.from_numpy(batch)

    def step():
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cpu",
                                                                                                  enabled=False)
        with context:
            loss = model(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="2 layers, seq 128, 2 steps: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.seq, args.steps = 2, 128, 3
    warnings.filterwarnings("ignore")
    heap = "freed memory kept in the heap" if keep_freed_memory() else "glibc's default malloc settings"
    torch.manual_seed(0)
    batch = np.random.default_rng(0).integers(0, HF_VOCAB, size=(args.batch, args.seq + 1)).astype(np.int64)
    threads = torch.get_num_threads()
    copy_gbs = copy_bandwidth_gbs()
    print(f"config: {args.layers} layers, d {args.d_model}, {args.heads} heads, seq {args.seq}, batch {args.batch}; "
          f"{threads} threads; {cpu_peak_tflops(torch.float32, threads)[1]}; every run: {heap}")
    print(f"{'dtype':6} {'run':15} {'step ms':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'of GEMM':>8}  x HF  "
          f"x gpt3d reference")
    for dtype in (("fp32", "bf16") if args.dtype == "both" else (args.dtype,)):
        torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        peak, _ = cpu_peak_tflops(torch_dtype, threads)
        gemm_rate, gemm_route = gemm_peak_tflops(torch_dtype)
        runs = {}
        for kernels in ("auto", "fused", "reference"):
            cfg, runs[f"gpt3d {kernels}"], trainer = gpt3d_step_fn(args, dtype, batch, kernels)
            if kernels == "auto":
                params = parameter_count(trainer)
        if dtype == "bf16":  # the bf16_matmul lever on its own: torch's bf16 GEMMs instead of auto's choice
            _, runs["gpt3d bf16 GEMM"], _ = gpt3d_step_fn(args, dtype, batch, "auto", "bf16")
        if dtype == "fp32" and gemm.fp32_gemm_library() != "torch":  # the fp32 GEMM library lever on its own
            runs["gpt3d torch GEMM"] = with_fp32_gemm("torch", gpt3d_step_fn(args, dtype, batch, "auto")[1])
        runs["hf (fused AdamW)"] = hf_step_fn(args, dtype, batch)
        flops = megatron_model_flops(cfg.model, args.batch, args.seq)
        tokens = args.batch * args.seq
        # Interleave the runs so machine noise hits all alike; each run's best round median is reported.
        times = {name: [] for name in runs}
        for _ in range(ROUNDS):
            for name, step in runs.items():
                times[name].append(time_steps(step, max(args.steps // ROUNDS, 1)))
        t_hf, t_ref = min(times["hf (fused AdamW)"]), min(times["gpt3d reference"])
        for name, ts in times.items():
            t = min(ts)
            tflops = flops / t / 1e12
            print(f"{dtype:6} {name:15} {t * 1e3:9.1f} {tokens / t:10.0f} {tflops:8.3f} {tflops / peak:6.1%} "
                  f"{tflops / gemm_rate:8.1%}  {t_hf / t:.2f}x  {t_ref / t:.2f}x")
        print(f"{dtype}: hardware peak {peak:.3f} TFLOP/s; best measured GEMM ({gemm_route}) {gemm_rate:.3f} TFLOP/s")
        widths = {args.d_model, 3 * args.d_model, cfg.model.d_ff, cfg.model.padded_vocab_size, HF_VOCAB}
        ours, theirs = (profiled_linear_gemm_seconds(runs[name], tokens, widths)
                        for name in ("gpt3d auto", "hf (fused AdamW)"))
        print(f"{dtype}: linear-layer and head GEMMs (least of 3 profiled steps each; gpt3d/profiler/gemm_floor.py): "
              f"gpt3d auto {ours * 1e3:.0f} ms, hf {theirs * 1e3:.0f} ms. hf's step / gpt3d's GEMMs = "
              f"{t_hf / ours:.2f}x: gpt3d auto's ceiling over hf were all else free")
        logit_bytes = 4 if dtype == "fp32" else 2
        floor = step_floor(ours, causal_attention_gemm_flops(args.layers, args.batch, args.seq, args.d_model),
                           gemm_rate, loss_bytes(tokens, cfg.model.padded_vocab_size, logit_bytes)
                           + adamw_bytes(params, low_precision_weights=dtype != "fp32"), copy_gbs)
        print(f"{dtype}: floor of gpt3d auto's step (gpt3d/profiler/step_floor.py): those GEMMs {ours * 1e3:.0f} ms + "
              f"the causal attention core's GEMMs at the best GEMM rate {floor.attention_gemms * 1e3:.0f} ms + the "
              f"loss's and AdamW's bytes at the copy bandwidth ({copy_gbs:.1f} GB/s) {floor.memory * 1e3:.0f} ms = "
              f"{floor.seconds * 1e3:.0f} ms. hf's step / floor = {t_hf / floor.seconds:.2f}x: the most gpt3d auto "
              f"could be ahead of hf, everything else free")


if __name__ == "__main__":
    main()
