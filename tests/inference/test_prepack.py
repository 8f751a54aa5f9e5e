"""On CPU the engine multiplies by oneDNN-prepacked copies of the blocks' linear weights (bf16; fp32 for GEMMs of 4+
rows). The reference is the same engine through the modules' own nn.Linear (the prepacked copies removed), for
left-padded batches. bf16: log-probabilities and greedy tokens identical, bit for bit (both GEMMs accumulate in fp32
and round once). fp32: oneDNN and MKL sum the products in different orders, so log-probabilities agree to rounding
(<= 1e-5) and the greedy tokens are the same."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from gpt3d.config.generate import SamplingConfig
from gpt3d.inference import InferenceEngine
from gpt3d.inference.loading import _onednn_bf16
from tests.inference.helpers import PROMPTS, make_models


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prepacked_linears_equal_plain_linears(dtype):
    ckpt, _ = make_models(Path(tempfile.mkdtemp(prefix="gpt3d-prepack-")))
    packed = InferenceEngine.load(ckpt, dtype=dtype)
    plain = InferenceEngine.load(ckpt, dtype=dtype)
    removed = 0
    for module in plain.stage.modules():
        if hasattr(module, "bf16_matmul"):
            module.bf16_matmul = "bf16"  # the reference is torch's own bf16 GEMM (not gpt3d/model/linear.py's route)
        if hasattr(module, "packed_weight"):
            del module.packed_weight
            removed += 1
    # qkv, proj, fc1, fc2 of every block, where oneDNN has the dtype (elsewhere nothing is prepacked)
    onednn = _onednn_bf16() if dtype == torch.bfloat16 else torch.backends.mkldnn.is_available()
    assert removed == (4 * plain.cfg.n_layers if onednn else 0)
    exact = dtype == torch.bfloat16

    def same(a: list[float], b: list[float]) -> bool:
        return a == b if exact else max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
    pairs = [(p, [7, 8, 9, 10]) for p in PROMPTS]
    for a, b in zip(packed.score(pairs, batch_size=3), plain.score(pairs, batch_size=3)):
        assert same(a.token_logprobs, b.token_logprobs) and a.greedy == b.greedy
    sampling = SamplingConfig(max_new_tokens=24, temperature=0, logprobs=True)
    for a, b in zip(packed.generate(PROMPTS, sampling), plain.generate(PROMPTS, sampling)):
        assert a.tokens == b.tokens and same(a.logprobs, b.logprobs)
