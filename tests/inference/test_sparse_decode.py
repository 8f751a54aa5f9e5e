"""GPT-3's block-sparse layers decode with exactly the keys their layout allows: KV-cached greedy decoding of a model
with the alternating dense / sparse pattern equals greedy decoding by the model's own full forward (the block-sparse
attention kernel over the whole sequence), alone and tensor-parallel (each rank holds its heads' layout)."""
from __future__ import annotations

import torch

from gpt3d.config import load_config
from gpt3d.config.generate import SamplingConfig
from gpt3d.inference import InferenceEngine
from gpt3d.model.gpt import build_gpt
from tests.inference.helpers import threads_one
from tests.parallel.harness import register, results

SPARSE = ["model.attention_pattern=alternating", "model.sparse.layout=fixed", "model.sparse.block=16",
          "model.sparse.num_local_blocks=2", "model.sparse.num_global_blocks=1",
          "model.sparse.different_layout_per_head=true", "model.init_std=0.2"]
PROMPTS = [[7, 3, 99, 4, 4, 120, 8, 1, 77, 300], list(range(200, 223))]
NEW = 40


def model_config():
    return load_config("tiny-test", SPARSE).model


def cached_decode(rank: int, world_size: int, tp: int) -> list[list[int]]:
    threads_one()
    from gpt3d.parallel.context import Layout, ParallelContext
    cfg = model_config()
    sd = build_gpt(cfg, seed=0).state_dict()
    engine = InferenceEngine.from_state_dict(sd, cfg, ParallelContext(Layout(tp, 1, 1), rank, torch.device("cpu")))
    return [c.tokens for c in engine.generate(PROMPTS, SamplingConfig(max_new_tokens=NEW, temperature=0))]


register(1, "sparse decode tp1", cached_decode, 1)
register(2, "sparse decode tp2", cached_decode, 2)


def full_forward_greedy(prompt: list[int]) -> list[int]:
    cfg = model_config()
    model = build_gpt(cfg, seed=0).eval()
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(NEW):
            padded = torch.tensor([seq + [0] * (cfg.seq_len - len(seq))])  # causal: the tail never reaches seq
            seq.append(int(model(padded)[0, len(seq) - 1].argmax()))
    return seq[len(prompt):]


def test_sparse_layers_decode_like_the_full_forward():
    cfg = model_config()
    layout = build_gpt(cfg, seed=0).blocks["1"].attn.layout
    assert not layout.all() and not torch.equal(layout[0], layout[1])  # really sparse, per-head layouts
    reference = [full_forward_greedy(p) for p in PROMPTS]
    assert results(1, "sparse decode tp1")[0] == reference
    assert results(2, "sparse decode tp2")[0] == reference
