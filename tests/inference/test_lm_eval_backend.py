"""gpt3d as an lm-evaluation-harness model: on a task YAML with local JSONL data, the per-example log-likelihoods of
the `gpt3d` backend (tensor-parallel over 2 spawned ranks) equal lm-eval's own `hf` backend on the `gpt3d convert
--to hf` export of the same checkpoint, and so do the accuracies."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gpt3d.eval.lm_eval_tasks import local_task_yaml
from tests.inference.helpers import make_models

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(tempfile.mkdtemp(prefix="gpt3d-lm-eval-"))
WORDS = ["red", "blue", "green", "cat", "dog", "fox", "tree", "lake", "river", "stone", "book", "page"]


@pytest.fixture(scope="module")
def setup():
    from gpt3d.data.corpus import build_default_corpus
    _, tokenizer_dir = build_default_corpus(None, 512)
    ckpt, export = make_models(ROOT, vocab_size=512, n_positions=64)
    from transformers import GPT2TokenizerFast  # the same BPE saved with the tokenizer_config AutoTokenizer needs
    GPT2TokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(ROOT / "hf-tokenizer")
    rng = random.Random(0)
    tasks = ROOT / "tasks"
    tasks.mkdir(exist_ok=True)
    with open(tasks / "mc.jsonl", "w") as fh:
        for _ in range(12):
            ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + " is"
            fh.write(json.dumps({"context": ctx, "choices": [" " + w for w in rng.sample(WORDS, 4)],
                                 "gold": rng.randrange(4)}) + "\n")
    with open(tasks / "text.jsonl", "w") as fh:  # some longer than the context: rolling windows
        for n in (5, 40, 90):
            fh.write(json.dumps({"context": " ".join(rng.choice(WORDS) for _ in range(n))}) + "\n")
    (tasks / "mc.yaml").write_text(local_task_yaml("gpt3d_local_mc", {"test": tasks / "mc.jsonl"},
                                                   metrics=("acc", "acc_norm")))
    (tasks / "rolling.yaml").write_text(local_task_yaml("gpt3d_local_rolling", {"test": tasks / "text.jsonl"},
                                                        "loglikelihood_rolling", metrics=("word_perplexity",)))
    return ckpt, export, tokenizer_dir, tasks


def _evaluate(model: str, model_args: str, tasks: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager
    if model == "gpt3d":
        import gpt3d.eval.lm_eval_backend  # noqa: F401  (registers the model)
    return lm_eval.simple_evaluate(model=model, model_args=model_args,
                                   tasks=["gpt3d_local_mc", "gpt3d_local_rolling"],
                                   task_manager=TaskManager(include_path=str(tasks)), log_samples=True,
                                   batch_size=4)


def _per_example(out: dict, task: str) -> list:
    return [[r[0] for r in s["resps"]] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


def test_loglikelihoods_and_accuracy_equal_hf_backend(setup):
    ckpt, export, tokenizer_dir, tasks = setup
    ours = _evaluate("gpt3d", f"checkpoint={ckpt},tp=2,tokenizer={tokenizer_dir}", tasks)
    hf = _evaluate("hf", f"pretrained={export},tokenizer={ROOT / 'hf-tokenizer'},dtype=float32,device=cpu", tasks)
    for task in ("gpt3d_local_mc", "gpt3d_local_rolling"):
        a, b = _per_example(ours, task), _per_example(hf, task)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            flat_x = [v for r in x for v in (r if isinstance(r, (list, tuple)) else [r])]
            flat_y = [v for r in y for v in (r if isinstance(r, (list, tuple)) else [r])]
            assert len(flat_x) == len(flat_y)
            for u, v in zip(flat_x, flat_y):
                if isinstance(u, bool):
                    assert u == v
                else:
                    assert abs(u - v) <= 1e-4, (task, u, v)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["gpt3d_local_mc"][metric] == hf["results"]["gpt3d_local_mc"][metric]


def test_module_runs_lm_eval_cli(setup, tmp_path):
    ckpt, _, tokenizer_dir, tasks = setup
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gpt3d.eval.lm_eval_backend", "--model_args",
                           f"checkpoint={ckpt},tokenizer={tokenizer_dir}", "--tasks", "gpt3d_local_mc",
                           "--include_path", str(tasks), "--output_path", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gpt3d_local_mc" in proc.stdout and "acc" in proc.stdout
