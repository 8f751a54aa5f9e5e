"""`gpt3d eval`: GPT-3's few-shot protocol scored like an independent Hugging Face reference, results.json and the
plot, and one clear message for each kind of bad input."""
from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest
import torch

from gpt3d.cli import main
from gpt3d.eval.protocol import build_requests
from gpt3d.eval.report import write_json_atomic
from gpt3d.eval.tasks import TaskError, load_task
from tests.inference.helpers import make_models

ROOT = Path(tempfile.mkdtemp(prefix="gpt3d-eval-"))
WORDS = ["red", "blue", "green", "cat", "dog", "fox", "tree", "lake", "river", "stone", "book", "page"]


@pytest.fixture(scope="module")
def setup():
    from gpt3d.data.corpus import build_default_corpus
    from gpt3d.data.tokenizer import load_tokenizer
    _, tokenizer_dir = build_default_corpus(None, 512)
    ckpt, export = make_models(ROOT, vocab_size=512, n_positions=64)
    rng = random.Random(1)
    mc = ROOT / "mc.jsonl"
    with open(mc, "w") as fh:
        for _ in range(10):
            fh.write(json.dumps({"context": " ".join(rng.choice(WORDS) for _ in range(4)) + " is",
                                 "choices": rng.sample(WORDS, 3), "gold": rng.randrange(3)}) + "\n")
    completion = ROOT / "copy.jsonl"
    with open(completion, "w") as fh:
        for _ in range(10):
            seq = " ".join(rng.choice(WORDS) for _ in range(2))
            fh.write(json.dumps({"context": seq + " =", "target": seq}) + "\n")
    return ckpt, export, tokenizer_dir, load_tokenizer(tokenizer_dir), mc, completion


def _hf_accuracy(export: Path, tasks, items, pairs) -> dict:
    """Accuracy from plain full forwards of the HF export over every (context, continuation) pair."""
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(export).eval()
    scores = []
    with torch.no_grad():
        for ctx, cont in pairs:
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
            target = torch.tensor(cont)
            scores.append((logp[pos, target].sum().item(), bool((logp[pos].argmax(-1) == target).all())))
    out = {}
    for item in items:
        kind = next(t for t in tasks if t.name == item.task)
        if kind.kind == "completion":
            ok = scores[item.choice_pairs[0]][1]
        else:
            per_token = kind.normalization == "token"
            values = [scores[p][0] / (n if per_token else 1) for p, n in zip(item.choice_pairs, item.choice_tokens)]
            ok = max(range(len(values)), key=lambda i: (values[i], -i)) == item.gold
        cell = out.setdefault(item.task, {}).setdefault(str(item.shots), [0, 0])
        cell[0] += ok
        cell[1] += 1
    return {t: {k: c / n for k, (c, n) in per.items()} for t, per in out.items()}


def test_eval_matches_hf_reference_and_writes_results(setup):
    ckpt, export, tokenizer_dir, tokenizer, mc, completion = setup
    out = ROOT / "out"
    tasks_arg = f"{mc},{completion},icl-mapping"
    assert main(["eval", str(ckpt), "--tasks", tasks_arg, "--shots", "0,1,3", "--limit", "8", "--tokenizer",
                 str(tokenizer_dir), "--out", str(out), "--batch-size", "3", "--icl-score", "--induction"]) == 0
    results = json.loads((out / "results.json").read_text())
    for png in ("accuracy_vs_shots.png", "induction_heads.png"):
        assert (out / png).stat().st_size > 1000
    # the ICL score: loss at token round(500/1024 * 64) = 31 minus loss at token round(50/1024 * 64) = 3
    from transformers import GPT2LMHeadModel

    from gpt3d.eval.icl import held_out_windows
    windows = torch.tensor(held_out_windows(tokenizer, 64, 8))
    with torch.no_grad():
        logits = GPT2LMHeadModel.from_pretrained(export).eval()(windows).logits.float()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), windows[:, 1:], reduction="none")
    icl = results["icl"]
    assert (icl["early_token"], icl["late_token"], icl["windows"]) == (3, 31, 8)
    assert abs(icl["icl_score"] - (losses[:, 30].mean() - losses[:, 2].mean()).item()) <= 1e-4
    assert len(results["induction"]["scores"]) == 3 and len(results["induction"]["scores"][0]) == 6
    tasks = [load_task(t, tokenizer) for t in tasks_arg.split(",")]
    pairs, items = build_requests(tasks, [0, 1, 3], tokenizer, 64, 1234, 8)
    reference = _hf_accuracy(export, tasks, items, pairs)
    got = {t: {k: cell["accuracy"] for k, cell in per.items()} for t, per in results["tasks"].items()}
    assert got == reference
    assert results["tasks"]["icl-mapping"]["3"]["demos_mean"] == 3.0


def test_demonstrations_are_seeded_exclude_the_example_and_fit_the_context(setup):
    _, _, _, tokenizer, mc, _ = setup
    task = load_task(str(mc), tokenizer)
    pairs, items = build_requests([task], [2], tokenizer, 64, seed=5)
    again, _ = build_requests([task], [2], tokenizer, 64, seed=5)
    other, _ = build_requests([task], [2], tokenizer, 64, seed=6)
    assert pairs == again and pairs != other
    for item, example in zip(items, task.test):
        ctx, _ = pairs[item.choice_pairs[0]]
        text = tokenizer.decode(ctx)
        assert text.endswith(example.context) and text.count("\n\n") == item.demos_used == 2
        assert example.context + " " + example.choices[example.gold] not in text.split("\n\n")[:-1] or \
            sum(e.context == example.context for e in task.test) > 1
    long_pairs, long_items = build_requests([task], [30], tokenizer, 64, seed=5)  # 30 demos cannot fit in 64 tokens
    assert all(len(c) + len(x) <= 64 for c, x in long_pairs)
    assert all(item.demos_used < 30 for item in long_items)


def test_bad_input_gets_one_clear_message(setup, tmp_path, capsys):
    ckpt, _, tokenizer_dir, tokenizer, _, _ = setup
    with pytest.raises(TaskError, match=r"unknown task 'nope': use a built-in task \(lambada-corpus, icl-copy, "
                                        r"icl-lookup, icl-mapping\) or a .yaml / .jsonl file"):
        load_task("nope", tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "a", "choices": ["x", "y"]}) + "\n")
    with pytest.raises(TaskError, match=rf"{bad}:1: missing field 'gold'"):
        load_task(str(bad), tokenizer)
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\nkind: completion\ndata: {train: x.jsonl}\n")
    with pytest.raises(TaskError, match=rf"{spec}: missing field 'data.test'"):
        load_task(str(spec), tokenizer)
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(ckpt, broken)
    next(broken.glob("*.safetensors")).unlink()
    assert main(["eval", str(broken), "--tasks", "icl-copy", "--tokenizer", str(tokenizer_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt3d eval: error: ") and "missing (listed in" in err and "the checkpoint is incomplete" in err


def test_interrupted_write_leaves_no_half_written_results(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"done": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"done": 2, "bad": object()})  # fails half-way through json.dump
    assert json.loads(path.read_text()) == {"done": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
