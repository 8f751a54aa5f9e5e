"""gpt3d as an lm-evaluation-harness (0.4) model: importing this module registers the model name `gpt3d`.

    python -m gpt3d.eval.lm_eval_backend --model_args checkpoint=PATH,tp=2 --tasks TASK --include_path DIR
    gpt3d eval PATH --lm-eval-tasks TASK --lm-eval-include DIR --tp 2

model_args: checkpoint (required), source (gpt3d | hf), tp, pp, tokenizer (directory with vocab.json + merges.txt,
default: the checkpoint's), dtype (fp32 | bf16), max_gen_toks. The tp x pp ranks are spawned by gpt3d
(gpt3d/inference/pool.py) and serve the harness's requests; contexts shared by several requests (the choices of a
multiple-choice question) are computed once. Tokenisation, truncation and rolling windows follow lm-eval's `hf` model.
"""
from __future__ import annotations

import sys
from typing import Optional

import lm_eval.models  # noqa: F401  (lm-eval adds its built-in models only to an empty registry: fill it first)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from gpt3d.config.generate import SamplingConfig


@register_model("gpt3d")
class GPT3DLM(LM):
    def __init__(self, checkpoint: str, source: str = "gpt3d", tp: int = 1, pp: int = 1,
                 tokenizer: Optional[str] = None, dtype: str = "fp32", batch_size: int = 16, max_gen_toks: int = 256,
                 **unused):
        super().__init__()
        from gpt3d.inference.loading import check_inference_layout, open_source
        from gpt3d.inference.pool import EnginePool
        from gpt3d.inference.requests import find_tokenizer
        self.cfg = open_source(checkpoint, source)[0]
        check_inference_layout(self.cfg, int(tp), int(pp))
        self.tokenizer = find_tokenizer(checkpoint, source, tokenizer)
        if self.tokenizer is None:
            raise ValueError(f"{checkpoint}: has no tokenizer; pass model_args tokenizer=DIR (vocab.json + merges.txt)")
        self.batch = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_gen_toks = int(max_gen_toks)
        self.pool = EnginePool(checkpoint, source, int(tp), int(pp),
                               torch.bfloat16 if dtype == "bf16" else torch.float32)

    # -- tokenisation, as lm-eval's HFLM ------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eod_id

    @property
    def max_length(self) -> int:
        return self.cfg.seq_len

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            return [self.eot_token_id], self.tokenizer.encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tokenizer.encode(context + continuation)
        ctx = self.tokenizer.encode(context)
        return ctx, whole[len(ctx):]

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """HFLM's left truncation: (context + continuation)[-(max_length + 1):]."""
        whole = (ctx + cont)[-(self.max_length + 1):]
        cut = len(ctx) + len(cont) - len(whole)
        if cut >= len(ctx):  # the continuation alone is too long: it keeps its end, after one token of context
            return whole[:1], whole[1:]
        return ctx[cut:], cont

    def _score(self, pairs):
        return self.pool.call("score", [self._fit(c, x) for c, x in pairs], self.batch)

    # -- the three request types ----------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        return [(s.logprob, s.greedy) for s in self._score(pairs)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        spans, pairs = [], []
        for req in requests:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tokenizer.encode(req.args[0]), prefix_token=self.eot_token_id,
                max_seq_len=self.max_length, context_len=1)]
            spans.append((len(pairs), len(pairs) + len(windows)))
            pairs.extend(windows)
        scores = self.pool.call("score", [(list(c), list(x)) for c, x in pairs], self.batch)
        return [sum(s.logprob for s in scores[a:b]) for a, b in spans]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            ids = self.tokenizer.encode(context)[-(self.max_length - max_new):] or [self.eot_token_id]
            decode = self.tokenizer.decode
            stop = (lambda toks: any(u in decode(toks) for u in until)) if until else None
            sampling = SamplingConfig(max_new_tokens=max_new, temperature=temperature,
                                      eos_token_id=self.eot_token_id)
            done = self.pool.call("generate", [ids], sampling, None, "error", stop)[0]
            tokens = done.tokens[:-1] if done.finish_reason == "eos" else done.tokens
            text = decode(tokens)
            for u in until:
                text = text.split(u)[0]
            out.append(text)
        return out

    def __del__(self):
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


def run_lm_eval(args) -> dict:
    """`gpt3d eval --lm-eval-tasks`: lm_eval.simple_evaluate with this model; returns its per-task results."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    model_args = f"checkpoint={args.checkpoint},source={args.source},tp={args.tp},pp={args.pp},dtype={args.dtype}"
    if args.tokenizer:
        model_args += f",tokenizer={args.tokenizer}"
    manager = TaskManager(include_path=args.lm_eval_include) if args.lm_eval_include else TaskManager()
    out = lm_eval.simple_evaluate(model="gpt3d", model_args=model_args, tasks=args.lm_eval_tasks.split(","),
                                  task_manager=manager, limit=args.limit, batch_size=args.batch_size)
    return out["results"] if out else {}


def main(argv: Optional[list[str]] = None) -> None:
    """lm-eval's own command line with the `gpt3d` model registered (--model defaults to gpt3d)."""
    from lm_eval.__main__ import cli_evaluate
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--model" not in argv:
        argv = ["--model", "gpt3d"] + argv
    sys.argv = ["lm_eval"] + argv
    cli_evaluate()


if __name__ == "__main__":
    main()
