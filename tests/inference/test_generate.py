"""Generation parity: greedy decoding equals Hugging Face generate on the `gpt3d convert --to hf` export, token for
token, in the layouts 1x1, tp2, pp2 and tp2 x pp2 (fp32, batched with left padding); seeded sampling gives the same
tokens in every layout; block-sparse layers decode like the model's own full forward."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from gpt3d.config.generate import SamplingConfig
from gpt3d.inference import InferenceEngine
from gpt3d.inference.engine import PromptError
from tests.inference.helpers import (NEW_TOKENS, PROMPTS, hf_greedy, hf_induction, hf_scores, make_models,
                                     threads_one)
from tests.parallel.harness import register, results

ROOT = Path(tempfile.mkdtemp(prefix="gpt3d-generate-"))
SAMPLERS = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.9, seed=7),
    "top_k+top_p": dict(temperature=0.8, top_k=12, top_p=0.9, seed=3),
    "top_p": dict(temperature=1.2, top_p=0.7, seed=11),
    "top_k": dict(temperature=1.0, top_k=5, seed=5),
}
# (context, continuation) pairs; contexts repeat (computed once, shared by their continuations)
SCORE_PAIRS = [(p[:k], p[k:] + [1, 2]) for p in PROMPTS for k in range(1, len(p) + 1)] + [(PROMPTS[2], [7]),
                                                                                         (PROMPTS[2], [8, 9])]
LAYOUTS = {"1x1": (1, 1, 1), "tp2": (2, 2, 1), "pp2": (2, 1, 2), "tp2xpp2": (4, 2, 2)}


def generate_task(rank: int, world_size: int, tp: int, pp: int, ckpt: str) -> dict:
    """Every sampler's tokens (and logprobs) in layout tp x pp, from the gpt3d checkpoint."""
    threads_one()
    from gpt3d.parallel.context import Layout, ParallelContext
    ctx = ParallelContext(Layout(tp, pp, 1), rank, torch.device("cpu"))
    engine = InferenceEngine.load(ckpt, ctx=ctx)
    out = {}
    for name, kw in SAMPLERS.items():
        new = NEW_TOKENS if name == "greedy" else 24  # greedy: the full 64 of the HF parity
        done = engine.generate(PROMPTS, SamplingConfig(max_new_tokens=new, logprobs=True, **kw))
        out[name] = [(c.tokens, c.logprobs) for c in done]
    out["scores"] = [(s.logprob, s.greedy) for s in engine.score(SCORE_PAIRS, batch_size=4)]
    from gpt3d.eval.icl import induction_scores
    out["induction"] = induction_scores(engine, 101, batch=2, half=20, seed=3).tolist()
    return out


for _name, (_world, _tp, _pp) in LAYOUTS.items():
    register(_world, f"generate {_name}", generate_task, _tp, _pp, str(ROOT / "ckpt"))


@pytest.fixture(scope="module")
def models():
    return make_models(ROOT)


@pytest.fixture(scope="module")
def reference(models):
    return hf_greedy(models[1], PROMPTS, NEW_TOKENS)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_greedy_matches_hf_generate_and_sampling_is_layout_independent(models, reference, layout):
    world = LAYOUTS[layout][0]
    got = results(world, f"generate {layout}")[0]
    assert [tokens for tokens, _ in got["greedy"]] == reference
    base = results(1, "generate 1x1")[0]
    for name in SAMPLERS:
        assert [t for t, _ in got[name]] == [t for t, _ in base[name]], name
        for (_, lp), (_, lp_ref) in zip(got[name], base[name]):
            torch.testing.assert_close(torch.tensor(lp), torch.tensor(lp_ref), atol=1e-4, rtol=0)
    hf = hf_scores(models[1], SCORE_PAIRS)
    for (lp, greedy), (lp_ref, greedy_ref) in zip(got["scores"], hf):
        assert abs(lp - lp_ref) <= 1e-4 and greedy == greedy_ref
    from gpt3d.eval.icl import repeated_random_tokens
    torch.testing.assert_close(torch.tensor(got["induction"]),
                               hf_induction(models[1], repeated_random_tokens(101, 2, 20, 3)), atol=1e-5, rtol=0)
    # every rank returns the same completions
    for other in results(world, f"generate {layout}")[1:]:
        assert other == got


def test_sampling_draws_from_the_filtered_distribution(models):
    """The Gumbel-max sampler's token frequencies match softmax(logits / T) restricted to the top-k / nucleus set."""
    from gpt3d.inference.sampling import next_tokens
    from gpt3d.parallel.context import single_process_context
    group = single_process_context().tp_group
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, 0.7, float("-inf")]])
    n = 4000
    for kw, kept in ((dict(temperature=0.7), None), (dict(temperature=1.0, top_k=3), [0, 1, 2]),
                     (dict(temperature=1.0, top_p=0.8), None)):
        cfg = SamplingConfig(seed=1, **kw)
        scaled = logits[0, :6] / cfg.temperature
        probs = torch.softmax(scaled, -1)
        if kw.get("top_p"):
            order = probs.argsort(descending=True)
            before = probs[order].cumsum(0) - probs[order]
            kept = order[before < kw["top_p"]].tolist()
        mask = torch.zeros(6, dtype=torch.bool)
        mask[kept if kept is not None else list(range(6))] = True
        expected = torch.where(mask, probs, torch.zeros_like(probs))
        expected /= expected.sum()
        counts = torch.zeros(7)
        for step in range(n):
            counts[next_tokens(logits, 0, 7, group, cfg, [0], step)] += 1
        assert counts[6] == 0
        torch.testing.assert_close(counts[:6] / n, expected, atol=0.03, rtol=0)


def test_prompt_longer_than_context_is_refused_or_truncated(models):
    engine = InferenceEngine.load(models[0])
    long_prompt = list(range(1, 100)) * 1  # 99 tokens, context 96
    with pytest.raises(PromptError, match=r"request 0: prompt of 99 tokens \+ 8 new tokens exceeds the context of 96 "
                                          r"tokens; .*--truncate left"):
        engine.generate([long_prompt], SamplingConfig(max_new_tokens=8, temperature=0))
    out = engine.generate([long_prompt], SamplingConfig(max_new_tokens=8, temperature=0), truncate="left")[0]
    assert out.truncated == 11 and out.prompt == long_prompt[11:] and len(out.tokens) == 8
    same = engine.generate([long_prompt[11:]], SamplingConfig(max_new_tokens=8, temperature=0))[0]
    assert same.tokens == out.tokens
    with pytest.raises(PromptError, match=r"token ids \[101\] are outside the vocabulary \[0, 101\)"):
        engine.generate([[1, 101]], SamplingConfig(max_new_tokens=2))


def test_eos_and_stop_end_completions(models):
    engine = InferenceEngine.load(models[0])
    free = engine.generate([PROMPTS[0]], SamplingConfig(max_new_tokens=20, temperature=0))[0].tokens
    eos = free[5]
    first = free.index(eos)
    out = engine.generate([PROMPTS[0]], SamplingConfig(max_new_tokens=20, temperature=0, eos_token_id=eos))[0]
    assert out.tokens == free[:first + 1] and out.finish_reason == "eos"
    out = engine.generate([PROMPTS[0]], SamplingConfig(max_new_tokens=20, temperature=0),
                          stop=lambda toks: len(toks) == 3)[0]
    assert out.tokens == free[:3] and out.finish_reason == "stop"


def test_generate_command_jsonl_in_and_out(models, tmp_path, capsys):
    from gpt3d.cli import main
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_ids": p, "tag": i}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(models[0]), "--prompts", str(prompts), "--temperature", "0", "--max-new-tokens",
                 "12", "--batch-size", "2", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    engine = InferenceEngine.load(models[0])
    expected = engine.generate(PROMPTS, SamplingConfig(max_new_tokens=12, temperature=0))
    assert [r["index"] for r in lines] == [r["tag"] for r in lines] == list(range(len(PROMPTS)))
    assert [r["completion_ids"] for r in lines] == [c.tokens for c in expected]
    assert all(r["finish_reason"] == "length" and r["prompt_tokens"] == len(p) for r, p in zip(lines, PROMPTS))
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt_ids": [1] * 95}) + "\n")
    assert main(["generate", str(models[0]), "--prompts", str(long), "--max-new-tokens", "4"]) == 2
    assert "request 0: prompt of 95 tokens + 4 new tokens exceeds the context of 96 tokens" in capsys.readouterr().err
    assert main(["generate", str(models[0]), "--prompts", str(long), "--prompt", "x"]) == 2
    assert "give exactly one of --prompt TEXT or --prompts FILE.jsonl" in capsys.readouterr().err
