"""PPO rollout benchmark: completion tokens per second of `gpt3d align`'s rollouts (the current policy copied into
gpt3d's KV-cached inference engine, then sampled) versus trl's rollouts (trl's PPOTrainer samples with Hugging Face
`generate`: the baseline at its best, KV cache on, no gradients, eval mode) on a GPT-2 holding the same weights. Same
prompts, batch, completion length (no early stop), temperature-1 sampling and thread count; calls alternate and the
fastest of each is taken. One process.

    python benchmarks/align_rollout.py [--batch 16] [--new-tokens 48] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from gpt3d.align.engine import rollout_engine  # noqa: E402
from gpt3d.config import load_config  # noqa: E402
from gpt3d.config.generate import SamplingConfig  # noqa: E402
from gpt3d.interop.hf import hf_config_from_model_config, state_dict_to_hf  # noqa: E402
from gpt3d.model.gpt import build_gpt  # noqa: E402
from gpt3d.parallel.context import single_process_context  # noqa: E402

MODEL = ["preset=tiny-test", "model.n_layers=4", "model.d_model=256", "model.n_heads=8", "model.seq_len=256",
         "model.vocab_size=4096", "train.objective=ppo", "finetune.data=unused", "finetune.init_from=unused",
         "finetune.ppo.reward_model=unused"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2LMHeadModel
    cfg = load_config(None, MODEL)
    policy = build_gpt(cfg.model, 0).eval()
    ctx = single_process_context()
    hf = GPT2LMHeadModel(hf_config_from_model_config(cfg.model))
    sd = {k: v for k, v in policy.state_dict().items() if not k.startswith("task_heads.")}
    hf.load_state_dict(state_dict_to_hf(sd, cfg.model), strict=False)
    hf.eval()
    prompts = torch.randint(0, cfg.model.vocab_size, (args.batch, args.prompt_tokens), generator=torch.Generator()
                            .manual_seed(0))
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, seed=1)

    def gpt3d_rollout() -> int:
        engine = rollout_engine(policy, ctx, cfg.model)  # the weight copy is part of every PPO step's rollout
        out = engine.generate(prompts.tolist(), sampling)
        return sum(len(c.tokens) for c in out)

    @torch.no_grad()
    def trl_rollout() -> int:
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0, top_k=0,
                          max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, use_cache=True,
                          pad_token_id=0)
        return (out.shape[1] - prompts.shape[1]) * out.shape[0]

    best = {"gpt3d": float("inf"), "trl (HF generate)": float("inf")}
    tokens = {}
    for _ in range(args.repeats):
        for name, fn in (("gpt3d", gpt3d_rollout), ("trl (HF generate)", trl_rollout)):
            start = time.perf_counter()
            tokens[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    rate = {name: tokens[name] / best[name] for name in best}
    print(f"model: {cfg.model.n_layers} layers, d {cfg.model.d_model}, vocab {cfg.model.vocab_size}; batch "
          f"{args.batch}, prompt {args.prompt_tokens} + {args.new_tokens} new tokens; threads {args.threads}; "
          f"load {os.getloadavg()[0]:.2f}")
    for name in best:
        print(f"{name:>18}: {rate[name]:8.1f} completion tokens/s (best of {args.repeats}: {best[name]:.3f} s)")
    print(f"gpt3d / trl rollout tokens per second: {rate['gpt3d'] / rate['trl (HF generate)']:.2f}x")


if __name__ == "__main__":
    main()
