"""JSONL examples -> token sequences with per-token labels, branches and marks, one encoder per objective.

Every encoder returns an `Encoded` example: parallel arrays over its tokens. Segments are local (0, 1, ... for the
sequences of one example: GPT-1's similarity and multiple choice use several); the packer (packing.py) makes them
unique in a row. Malformed lines are refused with their line number before any rank starts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gpt3d.config.finetune import ChatTemplate, ClassifyConfig
from gpt3d.data.errors import DataError

from .losses import IGNORE


@dataclass
class Encoded:
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    branches: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def add_sequence(self, pieces: list[tuple[list[int], bool]], segment: int, branch: int = 0, start: int = 0,
                     label_all: bool = False) -> None:
        """Append one causal sequence made of (token ids, learned) pieces: label_t = token_{t+1} when that token is
        learned (or label_all), positions from `start`."""
        ids = [t for part, _ in pieces for t in part]
        learned = [label_all or flag for part, flag in pieces for _ in part]
        for i, token in enumerate(ids):
            self.tokens.append(token)
            self.positions.append(start + i)
            self.segments.append(segment)
            self.branches.append(branch)
            self.labels.append(ids[i + 1] if i + 1 < len(ids) and learned[i + 1] else IGNORE)
            self.marks.append(0)
            self.targets.append(0)


class LineError(DataError):
    pass


def branch_tree(prompt: Sequence[int], completions: Sequence[Sequence[int]], learned: bool) -> Encoded:
    """The prompt once (branch 0, minus its last token), then per completion k a branch k that repeats the prompt's
    last token (whose output predicts the completion's first) followed by the completion; `learned`: the completion
    tokens carry labels. The completion's last token is marked k (its rank, 1 = best): the reward is read there."""
    out = Encoded()
    out.add_sequence([(list(prompt[:-1]), False)], 0)
    for k, comp in enumerate(completions, 1):
        out.add_sequence([(list(prompt[-1:]), False), (list(comp), learned)], 0, branch=k, start=len(prompt) - 1)
        out.marks[-1] = k
    return out


def read_jsonl(path: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is refused by number."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"finetune.data: no such file {path!r}; pass --data FILE.jsonl")
    out = []
    with file.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LineError(f"{path}:{number}: not valid JSON ({exc.msg}); fix or remove the line") from None
            if not isinstance(obj, dict):
                raise LineError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            out.append((number, obj))
    if not out:
        raise DataError(f"{path}: no examples (the file is empty)")
    return out


def _text(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise LineError(f"{where}: field {key!r} must be a string, got {value!r}")
    return value


class Encoders:
    """Encoders for one tokenizer and config; `encode(objective, obj, where)`."""

    def __init__(self, tokenizer, template: ChatTemplate, classify: ClassifyConfig):
        self.tok, self.template, self.classify_cfg = tokenizer, template, classify
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache or len(self._cache) > 10000:
            self._cache[text] = self.tok.encode(text)
        return self._cache[text]

    def end(self) -> list[int]:
        return self.ids(self.template.end) + ([self.tok.eod_id] if self.template.eod else [])

    # -- SFT ----------------------------------------------------------------------------------------------------
    def chat_pieces(self, obj: dict, where: str) -> list[tuple[list[int], bool]]:
        t = self.template
        if "messages" in obj:
            messages = obj["messages"]
            if not isinstance(messages, list) or not messages:
                raise LineError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}}")
            pieces = []
            last_assistant = max((i for i, m in enumerate(messages) if isinstance(m, dict)
                                  and m.get("role") == "assistant"), default=None)
            if last_assistant is None:
                raise LineError(f"{where}: no assistant message; SFT learns the assistant's replies")
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                    raise LineError(f"{where}: messages[{i}] must be {{\"role\": system|user|assistant, "
                                    f"\"content\": ...}}")
                content = _text(m, "content", f"{where}: messages[{i}]")
                prefix = getattr(t, m["role"])
                learned = m["role"] == "assistant"
                tail = self.end() if i == last_assistant else self.ids(t.end)
                pieces += [(self.ids(prefix), False), (self.ids(content), learned), (tail, learned)]
            return pieces
        if "prompt" in obj or "completion" in obj:
            prompt, completion = _text(obj, "prompt", where), _text(obj, "completion", where)
            return [(self.ids(t.user), False), (self.ids(prompt), False), (self.ids(t.end), False),
                    (self.ids(t.assistant), False), (self.ids(completion), True), (self.end(), True)]
        raise LineError(f"{where}: expected {{\"prompt\", \"completion\"}} or {{\"messages\": [...]}}")

    def sft(self, obj: dict, where: str) -> Encoded:
        out = Encoded()
        out.add_sequence(self.chat_pieces(obj, where), 0)
        return out

    # -- preference data: one prompt, K continuations sharing it -------------------------------------------------
    def prompt_ids(self, obj: dict, where: str) -> list[int]:
        t = self.template
        return (self.ids(t.user) + self.ids(_text(obj, "prompt", where)) + self.ids(t.end)
                + self.ids(t.assistant))

    def ranked(self, obj: dict, where: str) -> tuple[list[int], list[list[int]]]:
        """(prompt ids, completions best first)."""
        if "completions" in obj:
            comps = obj["completions"]
            if not isinstance(comps, list) or len(comps) < 2 or not all(isinstance(c, str) for c in comps):
                raise LineError(f"{where}: 'completions' must list >= 2 strings, best first")
        elif "chosen" in obj or "rejected" in obj:
            comps = [_text(obj, "chosen", where), _text(obj, "rejected", where)]
        else:
            raise LineError(f"{where}: expected {{\"prompt\", \"chosen\", \"rejected\"}} or "
                            f"{{\"prompt\", \"completions\": [best, ..., worst]}}")
        return self.prompt_ids(obj, where), [self.ids(c) + self.end() for c in comps]

    def reward(self, obj: dict, where: str) -> Encoded:
        prompt, comps = self.ranked(obj, where)
        return branch_tree(prompt, comps, learned=False)

    def dpo(self, obj: dict, where: str) -> Encoded:
        if "completions" in obj:
            raise LineError(f"{where}: DPO takes {{\"prompt\", \"chosen\", \"rejected\"}}")
        prompt, comps = self.ranked(obj, where)
        return branch_tree(prompt, comps, learned=True)

    # -- GPT-1 classification ------------------------------------------------------------------------------------
    def classify(self, obj: dict, where: str) -> Encoded:
        c = self.classify_cfg
        start, delim, extract = self.ids(c.start), self.ids(c.delim), self.ids(c.extract)
        label = obj.get("label")
        if c.task == "classification":
            sequences = [start + self.ids(_text(obj, "text", where)) + extract]
        elif c.task == "entailment":
            sequences = [start + self.ids(_text(obj, "premise", where)) + delim
                         + self.ids(_text(obj, "hypothesis", where)) + extract]
        elif c.task == "similarity":
            a, b = self.ids(_text(obj, "text_a", where)), self.ids(_text(obj, "text_b", where))
            sequences = [start + a + delim + b + extract, start + b + delim + a + extract]
        else:
            choices = obj.get("choices")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(x, str) for x in choices):
                raise LineError(f"{where}: 'choices' must list >= 2 strings")
            context = self.ids(_text(obj, "context", where))
            sequences = [start + context + delim + self.ids(x) + extract for x in choices]
        classes = len(sequences) if c.task == "multiple_choice" else c.num_classes
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < classes:
            raise LineError(f"{where}: 'label' must be an integer in [0, {classes}), got {label!r}")
        out = Encoded()
        for segment, seq in enumerate(sequences):
            out.add_sequence([(seq, True)], segment)  # the auxiliary LM loss covers every input token
            out.marks[-1], out.targets[-1] = 1, label
        return out

    def encoder(self, objective: str) -> Callable[[dict, str], Encoded]:
        return {"sft": self.sft, "reward": self.reward, "dpo": self.dpo, "classify": self.classify}[objective]


def truncate(example: Encoded, limit: int, where: str) -> Encoded:
    """Fit `example` into `limit` tokens: a single sequence keeps its first `limit` tokens; a prompt with branches
    shortens its longest completion until it fits; several sequences (GPT-1) are refused."""
    if len(example) <= limit:
        return example
    if max(example.segments) > 0:
        raise LineError(f"{where}: its {max(example.segments) + 1} sequences need {len(example)} tokens, more than "
                        f"train.seq_len={limit}; shorten the example or raise train.seq_len")
    arrays = {k: np.asarray(v) for k, v in vars(example).items()}
    if max(example.branches) == 0:
        keep = np.arange(len(example)) < limit
        arrays["labels"][limit - 1] = IGNORE
    else:
        branches = arrays["branches"]
        lengths = {k: int((branches == k).sum()) for k in range(1, branches.max() + 1)}
        excess = len(example) - limit
        while excess > 0:
            longest = max(lengths, key=lambda k: lengths[k])
            if lengths[longest] <= 2:
                raise LineError(f"{where}: the prompt alone needs more than train.seq_len={limit} tokens; shorten it "
                                f"or raise train.seq_len")
            lengths[longest] -= 1
            excess -= 1
        keep = np.ones(len(example), dtype=bool)
        for k, n in lengths.items():
            idx = np.nonzero(branches == k)[0]
            keep[idx[n:]] = False
            arrays["labels"][idx[n - 1]] = IGNORE
            arrays["marks"][idx[n - 1]] = arrays["marks"][idx[-1]]
    return Encoded(**{k: v[keep].tolist() for k, v in arrays.items()})
