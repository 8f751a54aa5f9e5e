"""Decode speed of the inference engine against Hugging Face `generate` (its KV cache, greedy), same model, same
prompts, measured in the same run: fp32 and bf16, batch 1 and 8. Both produce the same number of tokens (no EOS stop);
each side gets a warm-up call and the best of --repeats timed calls, alternating between the two. Prints decode tokens/s and the ratio.

    python benchmarks/generate.py [--layers 6 --d-model 512 --heads 8 --vocab 8192] [--prompt 32 --new 64]
    python benchmarks/generate.py --threads 1 --clock cpu     # on a machine shared with other jobs

--clock cpu times each call by this process's CPU time instead of the wall clock: other jobs on the machine then
slow neither side, which makes the ratio reproducible on a shared machine. It counts every thread's time, so it needs
--threads 1.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpt3d.config.generate import SamplingConfig  # noqa: E402
from gpt3d.inference import InferenceEngine  # noqa: E402


def best_of_interleaved(fns, repeats: int, clock=time.perf_counter) -> list[float]:
    """Best time of each function, the calls alternating so that a change in machine load hits both sides."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = clock()
            fn()
            best[i] = min(best[i], clock() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (needs --threads 1)")
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        ap.error(f"--clock cpu adds up the CPU time of every thread, so it needs --threads 1 (got {args.threads})")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt3d.cli import main as gpt3d_main
    root = Path(tempfile.mkdtemp(prefix="gpt3d-bench-generate-"))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=args.prompt + args.new, n_embd=args.d_model,
                               n_layer=args.layers, n_head=args.heads)).save_pretrained(root / "hf")
    gpt3d_main(["convert", str(root / "hf"), str(root / "ckpt"), "--from", "hf", "--quiet"])
    print(f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab {args.vocab}; prompt "
          f"{args.prompt}, {args.new} new tokens, greedy; {args.threads} threads; {args.clock} clock")
    print(f"{'dtype':<6}{'batch':>6}{'HF tok/s':>12}{'gpt3d tok/s':>14}{'ratio':>8}")
    for dtype in (torch.float32, torch.bfloat16):
        hf = GPT2LMHeadModel.from_pretrained(root / "hf", dtype=dtype).eval()
        engine = InferenceEngine.load(root / "ckpt", dtype=dtype)
        for batch in (1, 8):
            gen = torch.Generator().manual_seed(batch)
            prompts = torch.randint(0, args.vocab, (batch, args.prompt), generator=gen)
            mask = torch.ones_like(prompts)
            sampling = SamplingConfig(max_new_tokens=args.new, temperature=0)

            def run_hf():
                with torch.no_grad():
                    hf.generate(prompts, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                                do_sample=False, pad_token_id=0, use_cache=True)

            def run_ours():
                engine.generate(prompts.tolist(), sampling)
            tokens = batch * args.new
            t_hf, t_ours = best_of_interleaved([run_hf, run_ours], args.repeats, clock)
            name = "fp32" if dtype == torch.float32 else "bf16"
            print(f"{name:<6}{batch:>6}{tokens / t_hf:>12.1f}{tokens / t_ours:>14.1f}{t_hf / t_ours:>7.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
