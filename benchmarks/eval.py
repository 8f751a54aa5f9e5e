"""Evaluation speed: examples/s of lm-evaluation-harness with gpt3d as its model (`gpt3d` backend) against lm-eval's
own `hf` backend on the `gpt3d convert --to hf` export of the same checkpoint, same task (a local 4-choice task YAML,
few-shot), same batch size, measured in the same run (best of --repeats after a warm-up). gpt3d batches contexts by
length and runs a context shared by several requests (the choices of a question, with its few-shot prefix) once.

    python benchmarks/eval.py [--layers 4 --d-model 256] [--docs 64 --shots 4 --batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from gpt3d.eval.lm_eval_tasks import local_task_yaml  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["red", "blue", "green", "black", "cat", "dog", "fox", "bird", "tree", "lake", "river", "stone", "house",
         "road", "book", "page", "line", "word", "file", "list"]


def write_task(root: Path, docs: int) -> Path:
    rng = random.Random(0)
    for split, n in (("train", 64), ("test", docs)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for _ in range(n):
                ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " is"
                fh.write(json.dumps({"context": ctx, "choices": [" " + w for w in rng.sample(WORDS, 4)],
                                     "gold": rng.randrange(4)}) + "\n")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(local_task_yaml("gpt3d_bench_mc", {"train": root / "train.jsonl",
                                                                   "test": root / "test.jsonl"}))
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    import gpt3d.eval.lm_eval_backend  # noqa: F401  (registers `gpt3d`)
    from gpt3d.cli import main as gpt3d_main
    from gpt3d.data.corpus import build_default_corpus
    _, tokenizer_dir = build_default_corpus(None, 512)
    root = Path(tempfile.mkdtemp(prefix="gpt3d-bench-eval-"))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=512, n_embd=args.d_model, n_layer=args.layers,
                               n_head=args.heads)).save_pretrained(root / "random")
    gpt3d_main(["convert", str(root / "random"), str(root / "ckpt"), "--from", "hf", "--quiet"])
    gpt3d_main(["convert", str(root / "ckpt"), str(root / "hf"), "--to", "hf", "--quiet"])
    GPT2TokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(root / "hf")
    manager = TaskManager(include_path=str(write_task(root, args.docs)))
    models = {"hf": ("hf", f"pretrained={root / 'hf'},dtype=float32,device=cpu"),
              "gpt3d": ("gpt3d", f"checkpoint={root / 'ckpt'},tokenizer={tokenizer_dir}")}
    print(f"model: {args.layers} layers, d_model {args.d_model}; task: {args.docs} 4-choice questions, "
          f"{args.shots}-shot; batch size {args.batch_size}; {args.threads} threads")
    seconds, accs = {}, {}
    for name, (model, model_args) in models.items():
        from lm_eval.api.registry import get_model
        lm = get_model(model).create_from_arg_string(model_args, {"batch_size": args.batch_size})

        def run():
            return lm_eval.simple_evaluate(model=lm, tasks=["gpt3d_bench_mc"], task_manager=manager,
                                           num_fewshot=args.shots, batch_size=args.batch_size, random_seed=0)
        out = run()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - start)
        seconds[name] = min(times)
        accs[name] = out["results"]["gpt3d_bench_mc"]["acc,none"]
        print(f"{name:<6} {args.docs / seconds[name]:8.2f} examples/s  (acc {accs[name]:.4f})", flush=True)
    print(f"ratio gpt3d / hf: {seconds['hf'] / seconds['gpt3d']:.2f}x  (accuracies equal: {accs['hf'] == accs['gpt3d']})")


if __name__ == "__main__":
    main()
