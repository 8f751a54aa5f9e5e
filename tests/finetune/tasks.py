"""Synthetic fine-tuning tasks written to a fixed temporary directory (spawned ranks read the same files)."""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from .helpers import LETTERS, make_tokenizer, words, write_jsonl

ROOT = Path(tempfile.gettempdir()) / "gpt3d-finetune-tests"


def sft_rows(n: int, seed: int) -> list[dict]:
    return [{"prompt": f"reverse {w}", "completion": w[::-1]} for w in words(n, seed)]


def ranking_rows(n: int, seed: int, k: int = 3) -> list[dict]:
    """Completions ranked by how many 'a' they contain (more is better)."""
    rng = random.Random(seed)
    rows = []
    for prompt in words(n, seed):
        comps = ["".join(rng.choice(LETTERS[1:]) for _ in range(4)) + "a" * (k - i) for i in range(k)]
        rows.append({"prompt": prompt, "completions": comps})
    return rows


def preference_rows(n: int, seed: int) -> list[dict]:
    return [{"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][-1]}
            for r in ranking_rows(n, seed, 2)]


def similarity_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for a, b in zip(words(n, seed), words(n, seed + 1)):
        same = rng.random() < 0.5
        out.append({"text_a": a, "text_b": a if same else b, "label": int(same)})
    return out


def choice_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for w in words(n, seed):
        choices = [w[::-1], w, w + "a"]
        rng.shuffle(choices)
        out.append({"context": w, "choices": choices, "label": choices.index(w[::-1])})
    return out


def prepare() -> dict[str, list[str]]:
    """name -> config overrides (objective, data, tokenizer) of every task; files are written once."""
    ROOT.mkdir(parents=True, exist_ok=True)
    tok = ROOT / "tokenizer"
    if not (tok / "merges.txt").exists():
        staging = ROOT / f".tokenizer.{os.getpid()}"
        make_tokenizer(staging)
        try:
            os.rename(staging, tok)  # atomic; another rank may have won the race
        except OSError:
            shutil.rmtree(staging)
    tasks = {
        "sft": ("sft", sft_rows(12, 1), []),
        "reward": ("reward", ranking_rows(8, 2), []),
        "dpo": ("dpo", preference_rows(8, 3), []),
        "classify-similarity": ("classify", similarity_rows(8, 4), ["finetune.classify.task=similarity"]),
        "classify-choice": ("classify", choice_rows(8, 5), ["finetune.classify.task=multiple_choice"]),
    }
    out = {}
    for name, (objective, rows, extra) in tasks.items():
        path = ROOT / f"{name}.jsonl"
        if not path.exists():  # every spawned rank imports this module: write once, atomically
            tmp = write_jsonl(ROOT / f".{name}.{os.getpid()}.tmp", rows)
            os.replace(tmp, path)
        out[name] = [f"train.objective={objective}", f"finetune.data={path}", f"data.tokenizer_dir={tok}", *extra]
    return out


def run_layout_job(rank: int, world_size: int, overrides: list[str], trainer_class, build_data, steps: int) -> dict:
    """Train `steps` steps of `trainer_class` on `build_data(cfg)["train"]` in this rank's layout; rank 0 returns the
    losses, metrics and the full (gathered) parameters, which the layout tests compare with the single process."""
    from gpt3d.config import load_config
    from gpt3d.parallel.gather import gather_full
    from gpt3d.train.loop import global_batch
    from gpt3d.train.runtime import init_runtime
    cfg = load_config(None, overrides)
    rt = init_runtime(cfg, rank, world_size, rank, world_size)
    trainer = trainer_class(cfg, rt)
    data = build_data(cfg)["train"]
    results = [trainer.train_step(global_batch(data, step, cfg.train.global_batch_size)) for step in range(steps)]
    params = gather_full(rt.ctx, trainer.chunks, "param")
    out = {"losses": [r.loss for r in results], "metrics": [r.metrics for r in results], "params": params}
    return out if rank == 0 else {}
