"""GPT-3's evaluation protocol (Brown et al. 2020, section 2.4).

For each scored example and each K: K demonstrations are drawn at random (seeded by (seed, K, example index)) from the
task's demonstration pool (its training split, else its dev split; never the example itself), each written as
context + answer_prefix + answer, joined with the task's example separator, then the example's context. When the
prompt plus the longest answer does not fit the model's context, the earliest demonstrations are dropped (and, at K=0,
the context is cut from the left). Multiple choice: the choice with the highest log-likelihood wins, normalised per
token, not at all, or unconditionally (log p(choice | context) - log p(choice | unconditional_context)). Completion:
correct when greedy decoding reproduces the target tokens exactly.

Contexts and continuations are tokenised like lm-evaluation-harness: continuation tokens = tokens(context +
continuation) after the tokens of the context (trailing spaces of the context move to the continuation).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .tasks import Task


@dataclass
class Item:
    """One scored example at one K: its requests (indices into the pair list) and how to read them."""
    task: str
    shots: int
    gold: int  # index of the right choice (completion: 0)
    choice_pairs: list[int]
    uncond_pairs: list[int]
    choice_tokens: list[int]
    demos_used: int


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    stripped = context.rstrip(" ")
    moved = len(context) - len(stripped)
    context, continuation = stripped, context[len(stripped):] + continuation if moved else continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def _prompt(task: Task, example, demos) -> str:
    shots = [d.context + task.answer_prefix + task.answer(d) for d in demos]
    return task.example_separator.join(shots + [example.context])


def build_requests(tasks: list[Task], shots: list[int], tokenizer, seq_len: int, seed: int, limit=None
                   ) -> tuple[list[tuple[list[int], list[int]]], list[Item]]:
    pairs: list[tuple[list[int], list[int]]] = []
    items: list[Item] = []
    for task in tasks:
        examples = task.test[:limit] if limit else task.test
        for k in shots:
            for index, example in enumerate(examples):
                rng = random.Random(f"{seed}/{task.name}/{k}/{index}")
                pool = [d for d in task.demos if not (task.demos_exclude_self and d is example)]
                demos = rng.sample(pool, min(k, len(pool)))
                answers = example.choices if task.kind == "multiple_choice" else [example.target]
                while True:
                    prompt = _prompt(task, example, demos)
                    encoded = [encode_pair(tokenizer, prompt, task.answer_prefix + a) for a in answers]
                    longest = max(len(c) + len(x) for c, x in encoded)
                    if longest <= seq_len or not demos:
                        break
                    demos = demos[1:]
                if longest > seq_len:  # even alone the context is too long: keep its end
                    encoded = [(c[-(seq_len - len(x)):], x) for c, x in encoded]
                item = Item(task.name, k, example.gold if task.kind == "multiple_choice" else 0, [], [], [],
                            len(demos))
                for c, x in encoded:
                    item.choice_pairs.append(len(pairs))
                    item.choice_tokens.append(len(x))
                    pairs.append((c, x))
                if task.kind == "multiple_choice" and task.normalization == "unconditional":
                    for a in answers:
                        item.uncond_pairs.append(len(pairs))
                        pairs.append(encode_pair(tokenizer, task.unconditional_context, task.answer_prefix + a))
                items.append(item)
    return pairs, items


def accuracy(tasks: list[Task], items: list[Item], scores) -> dict:
    """{task: {K: {"accuracy", "n", "demos_mean"}}} from the engine's scores of the pairs."""
    kind = {t.name: t for t in tasks}
    out: dict = {}
    for item in items:
        task = kind[item.task]
        if task.kind == "completion":
            correct = scores[item.choice_pairs[0]].greedy
        else:
            values = [scores[p].logprob for p in item.choice_pairs]
            if task.normalization == "token":
                values = [v / n for v, n in zip(values, item.choice_tokens)]
            elif task.normalization == "unconditional":
                values = [v - scores[u].logprob for v, u in zip(values, item.uncond_pairs)]
            correct = max(range(len(values)), key=lambda i: (values[i], -i)) == item.gold
        cell = out.setdefault(item.task, {}).setdefault(str(item.shots), {"correct": 0, "n": 0, "demos": 0})
        cell["correct"] += int(correct)
        cell["n"] += 1
        cell["demos"] += item.demos_used
    for per_k in out.values():
        for cell in per_k.values():
            cell["accuracy"] = cell["correct"] / cell["n"]
            cell["demos_mean"] = cell.pop("demos") / cell["n"]
    return out
