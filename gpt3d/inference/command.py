"""`gpt3d generate CKPT`: complete prompts with a gpt3d checkpoint or a Hugging Face GPT-2 directory, in any tp x pp
layout, streaming one JSON line per completion (in input order) to stdout or --out."""
from __future__ import annotations

import argparse
import json
import sys
import time

from gpt3d.config.base import ConfigError
from gpt3d.config.generate import SamplingConfig

from .requests import RequestError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="gpt3d checkpoint (or run directory), or a HF GPT-2 directory with --from hf")
    parser.add_argument("--from", dest="source", choices=("gpt3d", "hf"), default="gpt3d", help="checkpoint format")
    parser.add_argument("--prompt", help="one prompt (text)")
    parser.add_argument("--prompts", help="JSONL file: {\"prompt\": TEXT} or {\"prompt_ids\": [ids]} per line")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], metavar="STR", help="end a completion at STR (repeat)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the tokenizer's <|endoftext|>")
    parser.add_argument("--logprobs", action="store_true", help="also write each generated token's log-probability")
    parser.add_argument("--batch-size", type=int, default=8, help="requests decoded together")
    parser.add_argument("--micro-batches", type=int, help="micro-batches per batch in the pipeline (default: --pp)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--truncate", choices=("error", "left"), default="error",
                        help="a prompt longer than the context minus --max-new-tokens: error, or keep its end")
    parser.add_argument("--tokenizer", help="directory with vocab.json + merges.txt (default: the checkpoint's)")
    parser.add_argument("--out", help="write the JSONL here instead of stdout")


def _rank_main(rank: int, world_size: int, args, sampling: SamplingConfig, requests, tokenizer) -> None:
    import torch

    from gpt3d.parallel.context import Layout, ParallelContext

    from .engine import InferenceEngine
    from .ranks import device_for_rank
    from .requests import record, stop_checker
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ctx = ParallelContext(Layout(args.tp, args.pp, 1), rank, device_for_rank())
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    engine = InferenceEngine.load(args.checkpoint, args.source, ctx=ctx, dtype=dtype, micro_batches=args.micro_batches)
    writer = ctx.is_last_stage and ctx.tp_rank == 0
    out = (open(args.out, "w") if args.out else sys.stdout) if writer else None
    stop = stop_checker(args.stop, tokenizer)
    pending: dict[int, dict] = {}
    next_index = [0]

    def emit(completion) -> None:  # stream in input order: hold a finished completion until its turn
        pending[completion.index] = record(requests[completion.index], completion, tokenizer, args.stop)
        while next_index[0] in pending:
            out.write(json.dumps(pending.pop(next_index[0])) + "\n")
            out.flush()
            next_index[0] += 1

    try:
        for start in range(0, len(requests), args.batch_size):
            batch = requests[start:start + args.batch_size]
            engine.generate([r.ids for r in batch], sampling, [r.index for r in batch], args.truncate, stop,
                            emit if writer else None)
    finally:
        if out is not None and out is not sys.stdout:
            out.close()


def run(args: argparse.Namespace) -> int:
    from gpt3d.parallel.context import LayoutError

    from .engine import PromptError, fit_prompt
    from .loading import check_inference_layout, open_source
    from .ranks import finish_ranks, run_on_ranks
    from .requests import find_tokenizer, read_requests, tokenize
    start = time.perf_counter()
    try:
        if args.batch_size < 1:
            raise RequestError(f"--batch-size {args.batch_size}: must be >= 1")
        requests = read_requests(args.prompt, args.prompts)
        cfg, _, _ = open_source(args.checkpoint, args.source)
        check_inference_layout(cfg, args.tp, args.pp)
        tokenizer = find_tokenizer(args.checkpoint, args.source, args.tokenizer)
        if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
            if args.tokenizer is not None or any(r.ids is None for r in requests):
                raise RequestError(f"the tokenizer ({tokenizer.directory}) has {tokenizer.vocab_size} ids but the "
                                   f"model's vocabulary is {cfg.vocab_size}: it is not this model's tokenizer; pass "
                                   f"--tokenizer DIR, or give token ids as \"prompt_ids\"")
            tokenizer = None  # token-id prompts only: the config's default tokenizer is not this model's
        tokenize(requests, tokenizer)
        eos = None if args.ignore_eos or tokenizer is None else tokenizer.eod_id
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, seed=args.seed, eos_token_id=eos, logprobs=args.logprobs)
        for r in requests:  # every prompt is checked before any rank starts
            fit_prompt(r.ids, cfg, sampling.max_new_tokens, args.truncate, r.index)
    except (RequestError, PromptError, ConfigError, LayoutError, ValueError, FileNotFoundError) as exc:
        print(f"gpt3d generate: error: {exc}", file=sys.stderr)
        return 2
    plain = argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith("_")})  # picklable
    run_on_ranks(_rank_main, args.tp * args.pp, plain, sampling, requests, tokenizer)
    print(f"gpt3d generate: {len(requests)} completions in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    finish_ranks()
    return 0
