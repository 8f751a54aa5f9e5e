"""Requests of `gpt3d generate`: prompts from --prompt or a JSONL file, the tokenizer that turns them into ids, and
the JSONL records written back."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


class RequestError(ValueError):
    """A prompt file or prompt the command cannot use; the message names the line and the fix."""


@dataclass
class Request:
    index: int
    text: Optional[str]  # the prompt text, or None when given as token ids
    ids: Optional[list[int]]  # filled by tokenize() for text prompts
    extra: dict  # other fields of the JSONL line, echoed back


def read_requests(prompt: Optional[str], prompts_file: Optional[str]) -> list[Request]:
    """--prompt TEXT, or --prompts FILE.jsonl with one object per line: {"prompt": TEXT} or {"prompt_ids": [ids]}
    (other fields are copied to the output)."""
    if (prompt is None) == (prompts_file is None):
        raise RequestError("give exactly one of --prompt TEXT or --prompts FILE.jsonl")
    if prompt is not None:
        return [Request(0, prompt, None, {})]
    path = Path(prompts_file)
    if not path.is_file():
        raise RequestError(f"--prompts {path}: no such file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise RequestError(f"{path}:{n}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict) or ("prompt" in obj) == ("prompt_ids" in obj):
            raise RequestError(f"{path}:{n}: each line must be an object with exactly one of \"prompt\" (text) or "
                               f"\"prompt_ids\" (a list of token ids)")
        if "prompt" in obj:
            if not isinstance(obj["prompt"], str):
                raise RequestError(f"{path}:{n}: \"prompt\" must be a string")
            text, ids = obj.pop("prompt"), None
        else:
            ids = obj.pop("prompt_ids")
            if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
                raise RequestError(f"{path}:{n}: \"prompt_ids\" must be a non-empty list of integers")
            text = None
        out.append(Request(len(out), text, ids, obj))
    if not out:
        raise RequestError(f"--prompts {path}: holds no prompts")
    return out


def find_tokenizer(checkpoint: str, source: str, tokenizer_dir: Optional[str]):
    """The tokenizer: --tokenizer DIR, the HF directory's vocab.json + merges.txt, or the one the gpt3d checkpoint
    was trained with (data.tokenizer_dir or the default corpus' BPE). None when there is none."""
    from gpt3d.data.tokenizer import MERGES_FILE, VOCAB_FILE, load_tokenizer
    if tokenizer_dir is not None:
        return load_tokenizer(tokenizer_dir)
    if source == "hf":
        has = all(os.path.isfile(os.path.join(checkpoint, f)) for f in (VOCAB_FILE, MERGES_FILE))
        return load_tokenizer(checkpoint) if has else None
    from gpt3d.checkpoint import Checkpoint
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    from gpt3d.config.base import from_dict
    from gpt3d.config.data import DataConfig
    from gpt3d.data.gpt_dataset import tokenizer_for
    data = from_dict(DataConfig, Checkpoint(resolve_checkpoint_path(checkpoint)).config.get("data", {}), "data")
    return tokenizer_for(data)


def tokenize(requests: list[Request], tokenizer) -> None:
    texts = [r for r in requests if r.ids is None]
    if texts and tokenizer is None:
        raise RequestError("text prompts need a tokenizer, and this checkpoint has none: pass --tokenizer DIR "
                           "(vocab.json + merges.txt) or give token ids as \"prompt_ids\"")
    if texts:
        for r, ids in zip(texts, tokenizer.encode_batch([r.text for r in texts])):
            if not ids:
                raise RequestError(f"request {r.index}: the prompt is empty")
            r.ids = ids


def stop_checker(stops: list[str], tokenizer):
    """stop(tokens) -> True once the decoded completion contains a stop string."""
    if not stops:
        return None
    if tokenizer is None:
        raise RequestError("--stop needs a tokenizer to decode completions: pass --tokenizer DIR")
    return lambda tokens: any(s in tokenizer.decode(tokens) for s in stops)


def record(request: Request, completion, tokenizer, stops: list[str]) -> dict:
    out = {"index": request.index, **request.extra}
    if request.text is not None:
        out["prompt"] = request.text
    if tokenizer is not None:
        text = tokenizer.decode(completion.tokens)
        cut = [text.index(s) for s in stops if s in text]
        out["completion"] = text[:min(cut)] if cut else text
    out.update({"completion_ids": completion.tokens, "finish_reason": completion.finish_reason,
                "prompt_tokens": len(completion.prompt)})
    if completion.truncated:
        out["truncated_prompt_tokens"] = completion.truncated
    if completion.logprobs is not None:
        out["logprobs"] = completion.logprobs
    return out
