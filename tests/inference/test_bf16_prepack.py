"""bf16 on CPU: the engine multiplies by oneDNN-prepacked copies of the blocks' linear weights. The reference is the
same engine through the modules' own nn.Linear (the prepacked copies removed): log-probabilities and greedy tokens
must be identical, bit for bit, for left-padded batches."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from gpt3d.config.generate import SamplingConfig
from gpt3d.inference import InferenceEngine
from gpt3d.inference.loading import _onednn_bf16
from tests.inference.helpers import PROMPTS, make_models


def test_prepacked_bf16_linears_equal_plain_linears():
    ckpt, _ = make_models(Path(tempfile.mkdtemp(prefix="gpt3d-prepack-")))
    packed = InferenceEngine.load(ckpt, dtype=torch.bfloat16)
    plain = InferenceEngine.load(ckpt, dtype=torch.bfloat16)
    removed = 0
    for module in plain.stage.modules():
        if hasattr(module, "packed_weight"):
            del module.packed_weight
            removed += 1
    # qkv, proj, fc1, fc2 of every block, on a CPU with oneDNN bf16 (elsewhere nothing is prepacked)
    assert removed == (4 * plain.cfg.n_layers if _onednn_bf16() else 0)
    pairs = [(p, [7, 8, 9, 10]) for p in PROMPTS]
    for a, b in zip(packed.score(pairs, batch_size=3), plain.score(pairs, batch_size=3)):
        assert a.token_logprobs == b.token_logprobs and a.greedy == b.greedy
    sampling = SamplingConfig(max_new_tokens=24, temperature=0, logprobs=True)
    for a, b in zip(packed.generate(PROMPTS, sampling), plain.generate(PROMPTS, sampling)):
        assert (a.tokens, a.logprobs) == (b.tokens, b.logprobs)
