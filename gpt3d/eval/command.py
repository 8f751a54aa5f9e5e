"""`gpt3d eval CKPT --tasks T1,T2 --shots 0,1,8`: GPT-3's few-shot protocol on built-in or user tasks, in any
tp x pp layout; prints a table and writes OUT/results.json and OUT/accuracy_vs_shots.png. `--icl-score` adds the
in-context learning score, `--induction` the per-head induction-score heatmap, `--lm-eval-tasks` runs
lm-evaluation-harness tasks with gpt3d as its model."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gpt3d.config.base import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="gpt3d checkpoint (or run directory), or a HF GPT-2 directory with --from hf")
    parser.add_argument("--from", dest="source", choices=("gpt3d", "hf"), default="gpt3d")
    parser.add_argument("--tasks", default="", help="comma-separated built-in task names or .yaml/.jsonl task files "
                                                    "(built-in: lambada-corpus, icl-copy, icl-lookup, icl-mapping)")
    parser.add_argument("--shots", default="0,1,8", help="comma-separated K values (demonstrations per prompt)")
    parser.add_argument("--limit", type=int, help="score at most N examples per task")
    parser.add_argument("--batch-size", type=int, default=16, help="contexts per forward")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the demonstration draws")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--tokenizer", help="directory with vocab.json + merges.txt (default: the checkpoint's)")
    parser.add_argument("--out", default="eval", help="directory for results.json and the plots")
    parser.add_argument("--icl-score", action="store_true", help="also report the in-context learning score")
    parser.add_argument("--induction", action="store_true", help="also write the per-head induction-score heatmap")
    parser.add_argument("--induction-period", type=int, default=0,
                        help="length T of the random run repeated for the induction score (default: context / 2)")
    parser.add_argument("--lm-eval-tasks", help="comma-separated lm-evaluation-harness tasks, run with gpt3d as model")
    parser.add_argument("--lm-eval-include", help="lm-eval --include_path: a directory of task YAMLs")


def _parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--shots {text!r}: expected comma-separated integers such as 0,1,8") from None
    if not shots or any(k < 0 for k in shots):
        raise ConfigError(f"--shots {text!r}: expected non-negative integers such as 0,1,8")
    return sorted(set(shots))


def _rank_main(rank: int, world_size: int, args, pairs, windows, vocab: int) -> dict:
    import torch

    from gpt3d.inference import InferenceEngine
    from gpt3d.inference.ranks import device_for_rank
    from gpt3d.parallel.context import Layout, ParallelContext

    from .icl import icl_score, induction_scores
    ctx = ParallelContext(Layout(args.tp, args.pp, 1), rank, device_for_rank())
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    engine = InferenceEngine.load(args.checkpoint, args.source, ctx=ctx, dtype=dtype)
    out = {"scores": engine.score(pairs, args.batch_size) if pairs else []}
    if windows:
        out["icl"] = icl_score(engine, windows, args.batch_size)
    if args.induction:
        out["induction"] = induction_scores(engine, vocab, half=args.induction_period).tolist()
    return out


def run(args: argparse.Namespace) -> int:
    from gpt3d.inference.loading import check_inference_layout, open_source
    from gpt3d.inference.ranks import finish_ranks, run_on_ranks
    from gpt3d.inference.requests import find_tokenizer
    from gpt3d.parallel.context import LayoutError

    from .icl import held_out_windows, induction_heatmap
    from .protocol import accuracy, build_requests
    from .report import plot, table, write_json_atomic
    from .tasks import TaskError, load_task
    start = time.perf_counter()
    try:
        shots = _parse_shots(args.shots)
        names = [t for t in args.tasks.split(",") if t.strip()]
        if not names and not (args.icl_score or args.induction or args.lm_eval_tasks):
            raise ConfigError("nothing to evaluate: give --tasks, --icl-score, --induction or --lm-eval-tasks")
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit {args.limit}: must be >= 1")
        cfg, _, _ = open_source(args.checkpoint, args.source)
        check_inference_layout(cfg, args.tp, args.pp)
        if args.induction_period and not 1 <= args.induction_period <= cfg.seq_len // 2:
            raise ConfigError(f"--induction-period {args.induction_period}: must be between 1 and half the context "
                              f"({cfg.seq_len // 2}), so that the run fits twice")
        tokenizer = None
        if names or args.icl_score:
            tokenizer = find_tokenizer(args.checkpoint, args.source, args.tokenizer)
            if tokenizer is None:
                raise ConfigError(f"{args.checkpoint}: has no tokenizer; pass --tokenizer DIR (vocab.json + merges.txt)")
            if tokenizer.vocab_size > cfg.vocab_size:
                raise ConfigError(f"the tokenizer ({tokenizer.directory}) has {tokenizer.vocab_size} ids but the "
                                  f"model's vocabulary is {cfg.vocab_size}; pass this model's --tokenizer DIR")
        tasks = [load_task(n.strip(), tokenizer) for n in names]
        pairs, items = build_requests(tasks, shots, tokenizer, cfg.seq_len, args.seed, args.limit)
        windows = held_out_windows(tokenizer, cfg.seq_len, args.limit or 32) if args.icl_score else []
    except (TaskError, ConfigError, LayoutError, ValueError, FileNotFoundError) as exc:
        print(f"gpt3d eval: error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"checkpoint": str(args.checkpoint), "layout": {"tp": args.tp, "pp": args.pp}, "seed": args.seed}
    if pairs or windows or args.induction:
        got = run_on_ranks(_rank_main, args.tp * args.pp, args, pairs, windows, cfg.vocab_size)
        if tasks:
            results["tasks"] = accuracy(tasks, items, got["scores"])
            print(table(results["tasks"]))
            plot(results["tasks"], out_dir / "accuracy_vs_shots.png", f"{Path(args.checkpoint).name}: accuracy vs K")
        if "icl" in got:
            results["icl"] = got["icl"]
            print(f"ICL score (loss at token {got['icl']['late_token']} - loss at token {got['icl']['early_token']}): "
                  f"{got['icl']['icl_score']:+.4f}")
        if "induction" in got:
            import torch
            scores = torch.tensor(got["induction"])
            period = args.induction_period or cfg.seq_len // 2
            results["induction"] = {"scores": got["induction"], "max": float(scores.max()), "period": period}
            induction_heatmap(scores, out_dir / "induction_heads.png", f"induction score per head (random run of {period} tokens, repeated)")
            layer, head = divmod(int(scores.argmax()), scores.shape[1])
            print(f"induction: strongest head layer {layer} head {head}, score {float(scores.max()):.3f}")
    if args.lm_eval_tasks:
        from .lm_eval_backend import run_lm_eval
        results["lm_eval"] = run_lm_eval(args)
        for task, metrics in results["lm_eval"].items():
            shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items()
                              if isinstance(v, float) and "stderr" not in k)
            print(f"lm-eval {task}: {shown}")
    results["seconds"] = round(time.perf_counter() - start, 2)
    write_json_atomic(out_dir / "results.json", results)
    print(f"gpt3d eval: wrote {out_dir / 'results.json'} in {results['seconds']:.1f}s")
    finish_ranks()
    return 0
