"""Evaluation tasks: examples, splits and formatting, from built-in generators or user YAML / JSONL files.

A task is either
- multiple_choice: each example has a `context`, `choices` and the index `gold` of the right one; scored by the
  log-likelihood of each choice after the context (normalised per token, not at all, or unconditionally: minus the
  choice's log-likelihood after `unconditional_context`, GPT-3's normalisation for ARC / OpenBookQA / RACE);
- completion: each example has a `context` and a `target`; correct when greedy decoding produces the target exactly
  (LAMBADA's last word).

User task files:
- JSONL, one example per line: {"context": ..., "choices": [...], "gold": i} or {"context": ..., "target": ...};
  the few-shot demonstrations come from the same file (never the example itself).
- YAML: name, kind, data ({train: FILE, dev: FILE, test: FILE}: test required; demonstrations from train, else dev,
  else test), and optionally answer_prefix, example_separator, normalization, unconditional_context.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

KINDS = ("multiple_choice", "completion")
NORMALIZATIONS = ("token", "none", "unconditional")


class TaskError(ValueError):
    """An unknown task, or a task file with a missing or wrong field; the message names it."""


@dataclass
class Example:
    context: str
    choices: Optional[list[str]] = None  # multiple choice
    gold: Optional[int] = None
    target: Optional[str] = None  # completion


@dataclass
class Task:
    name: str
    kind: str
    test: list[Example]  # what is scored
    demos: list[Example]  # the pool of few-shot demonstrations (train split, else dev)
    answer_prefix: str = " "  # between a context and its answer
    example_separator: str = "\n\n"  # between demonstrations
    normalization: str = "token"
    unconditional_context: str = "Answer:"
    demos_exclude_self: bool = False  # demonstrations drawn from the scored split must skip the scored example
    extra: dict = field(default_factory=dict)

    def answer(self, example: Example) -> str:
        return example.choices[example.gold] if self.kind == "multiple_choice" else example.target


def _example(obj, kind: str, where: str) -> Example:
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object per line")
    if not isinstance(obj.get("context"), str):
        raise TaskError(f"{where}: missing field 'context' (a string)")
    if kind == "multiple_choice":
        choices, gold = obj.get("choices"), obj.get("gold")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise TaskError(f"{where}: missing field 'choices' (a list of at least 2 strings)")
        if not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise TaskError(f"{where}: missing field 'gold' (the index of the right choice, 0..{len(choices) - 1})")
        return Example(obj["context"], choices=choices, gold=gold)
    if not isinstance(obj.get("target"), str) or not obj["target"]:
        raise TaskError(f"{where}: missing field 'target' (a non-empty string)")
    return Example(obj["context"], target=obj["target"])


def read_jsonl(path: Path, kind: Optional[str]) -> tuple[list[Example], str]:
    if not path.is_file():
        raise TaskError(f"{path}: no such task data file")
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise TaskError(f"{path}: holds no examples")
    out = []
    for n, line in lines:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise TaskError(f"{path}:{n}: not valid JSON ({exc})") from None
        if kind is None:
            kind = "multiple_choice" if isinstance(obj, dict) and "choices" in obj else "completion"
        out.append(_example(obj, kind, f"{path}:{n}"))
    return out, kind


def load_yaml_task(path: Path) -> Task:
    import yaml
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TaskError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict):
        raise TaskError(f"{path}: expected a mapping with name, kind and data")
    known = {"name", "kind", "data", "answer_prefix", "example_separator", "normalization", "unconditional_context"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise TaskError(f"{path}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    for key in ("name", "kind", "data"):
        if key not in spec:
            raise TaskError(f"{path}: missing field '{key}'")
    if spec["kind"] not in KINDS:
        raise TaskError(f"{path}: kind {spec['kind']!r} is not one of {list(KINDS)}")
    norm = spec.get("normalization", "token")
    if norm not in NORMALIZATIONS:
        raise TaskError(f"{path}: normalization {norm!r} is not one of {list(NORMALIZATIONS)}")
    data = spec["data"]
    if not isinstance(data, dict) or "test" not in data:
        raise TaskError(f"{path}: missing field 'data.test' (the JSONL file of the scored examples)")
    base = path.parent

    def split(name):
        return read_jsonl(base / os.path.expanduser(data[name]), spec["kind"])[0] if name in data else None
    test = split("test")
    demos = split("train") or split("dev")
    return Task(str(spec["name"]), spec["kind"], test, demos or test,
                answer_prefix=spec.get("answer_prefix", " "), example_separator=spec.get("example_separator", "\n\n"),
                normalization=norm, unconditional_context=spec.get("unconditional_context", "Answer:"),
                demos_exclude_self=demos is None)


def load_task(spec: str, tokenizer, corpus_cache: Optional[str] = None) -> Task:
    """A built-in task name (gpt3d/eval/builtin.py) or the path of a .yaml/.yml/.jsonl task file."""
    from .builtin import BUILTIN, builtin_task
    if spec in BUILTIN:
        return builtin_task(spec, tokenizer, corpus_cache)
    path = Path(os.path.expanduser(spec))
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise TaskError(f"{path}: no such task file")
        return load_yaml_task(path)
    if path.suffix == ".jsonl":
        examples, kind = read_jsonl(path, None)
        return Task(path.stem, kind, examples, examples, demos_exclude_self=True)
    raise TaskError(f"unknown task {spec!r}: use a built-in task ({', '.join(BUILTIN)}) or a .yaml / .jsonl file")
