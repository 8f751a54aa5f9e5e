"""model.bf16_matmul=fp32: bf16 linear layers through fp32 GEMMs (gpt3d/model/linear.py).

Reference: the same product in fp64 from the same bf16 operands. A bf16 GEMM (torch's, accumulating in fp32) and the
fp32 route both round a fp32 sum once to bf16, so each must be within one bf16 rounding step of the fp64 value
rounded to bf16 (the two fp32 sums differ only in the order of additions). The backward's GEMMs are checked the
same way, and the whole model: a bf16 training step gives the same loss and gradients either way, to bf16 rounding.
"""
from __future__ import annotations

import pytest
import torch

from gpt3d.config import load_config
from gpt3d.config.base import ConfigError
from gpt3d.config.model import ModelConfig
from gpt3d.model.linear import BF16_MATMUL, bf16_gemm_beats_fp32, in_fp32, linear, torch_bf16_gemm_is_faster


def _bf16_ulps(got: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest |got - exact| in units of the bf16 spacing at exact's magnitude (2^-7 relative, 8 significant bits)."""
    spacing = torch.ldexp(torch.ones_like(exact), torch.frexp(exact.abs().clamp_min(1e-30))[1] - 8)
    return ((got.double() - exact) / spacing).abs().max().item()


def _operands(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 37, 96, generator=gen).bfloat16()
    w = (torch.randn(80, 96, generator=gen) * 0.1).bfloat16()
    b = torch.randn(80, generator=gen).bfloat16()
    g = torch.randn(3, 37, 80, generator=gen).bfloat16()
    return x, w, b, g


def _grads(mode: str, keep_fp32: bool = False):
    x, w, b, g = (t.clone().requires_grad_(i < 3) for i, t in enumerate(_operands()))
    y = linear(x, w, b, mode, keep_fp32=keep_fp32)
    y.backward(g.to(y.dtype))
    return y, x.grad, w.grad, b.grad


def test_forward_and_gradients_are_the_exact_product_rounded_once_like_torchs_bf16_gemm():
    x, w, b, g = (t.double() for t in _operands())
    exact = {"y": x @ w.t() + b, "dx": g @ w, "dw": g.reshape(-1, 80).t() @ x.reshape(-1, 96),
             "db": g.reshape(-1, 80).sum(0)}
    for mode in ("fp32", "bf16"):
        got = dict(zip(("y", "dx", "dw", "db"), _grads(mode)))
        for name, value in got.items():
            assert value.dtype == torch.bfloat16
            # within one rounding step: the fp32 sum rounded once, not the bf16 sum of bf16 products
            assert _bf16_ulps(value, exact[name]) <= 1.0, (mode, name, _bf16_ulps(value, exact[name]))


def test_keep_fp32_returns_the_unrounded_fp32_product_and_takes_an_fp32_gradient_unrounded():
    x, w, b, g = (t.double() for t in _operands())
    y, dx, dw, db = _grads("fp32", keep_fp32=True)
    assert y.dtype == torch.float32 and dx.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), x @ w.t() + b, rtol=1e-6, atol=1e-5)  # fp32 accumulation only
    assert _bf16_ulps(dx, g @ w) <= 1.0


def test_which_gemm_runs():
    bf16, fp32 = torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2)
    assert in_fp32(bf16, "fp32") and not in_fp32(bf16, "bf16")
    assert not in_fp32(fp32, "fp32") and not in_fp32(fp32, "auto")  # other dtypes: torch's own GEMM
    assert in_fp32(bf16, "auto") == (not torch_bf16_gemm_is_faster())
    with pytest.raises(ValueError, match=r"model.bf16_matmul must be one of \('auto', 'bf16', 'fp32'\), got 'tf32'"):
        in_fp32(bf16, "tf32")
    assert BF16_MATMUL == ("auto", "bf16", "fp32")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["preset=tiny-test", "model.bf16_matmul=tf32"])
    assert str(err.value) == "model.bf16_matmul: expected one of ['auto', 'bf16', 'fp32'], got 'tf32'"


@pytest.mark.parametrize("split_backward", [False, True])
def test_a_bf16_model_step_is_the_same_either_way(split_backward):
    """Loss and every gradient of a bf16 GPT, torch's bf16 GEMMs against the fp32 route (also through the B/W-split
    linears of the zero-bubble schedules). Differences come from bf16 rounding of different fp32 sums: a relative 2e-2
    on gradients is a few bf16 steps (2^-8 = 0.4%) after 2 layers of backward."""
    from gpt3d.model.gpt import GPTStage
    from gpt3d.model.init import materialize
    from gpt3d.parallel.context import single_process_context
    from gpt3d.parallel.tensor import attach_weight_grad_store, use_parallel_linears
    from gpt3d.model.linear import weight_gradient
    from gpt3d.parallel.weight_grad import WeightGradStore
    results = {}
    for mode in ("bf16", "fp32"):
        cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, seq_len=32, vocab_size=300, bf16_matmul=mode)
        with torch.device("meta"):
            model = GPTStage(cfg, range(cfg.n_layers), first=True, last=True)
        deferred: dict = {}
        store = WeightGradStore(lambda p, x, dy, fp32, _: deferred.__setitem__(p, weight_gradient(x, dy, fp32)))
        if split_backward:  # the blocks' linears compute weight gradients later, as in a zero-bubble schedule
            use_parallel_linears(model, single_process_context().tp_group, False)
            assert attach_weight_grad_store([model], store) == 4 * cfg.n_layers
        model = materialize(model, cfg, 7, "cpu").to(torch.bfloat16)
        ids = torch.randint(0, 300, (2, 33), generator=torch.Generator().manual_seed(1))
        loss = model(ids[:, :-1], ids[:, 1:])
        with store.capture("micro-batch 0"):
            loss.backward()
        store.flush("micro-batch 0")
        assert len(deferred) == (4 * cfg.n_layers if split_backward else 0)
        grads = {n: (p.grad if p not in deferred else deferred[p]).float() for n, p in model.named_parameters()}
        results[mode] = (loss.float().item(), grads)
    (loss_a, grads_a), (loss_b, grads_b) = results["bf16"], results["fp32"]
    assert abs(loss_a - loss_b) <= 1e-2 * abs(loss_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=2e-2, atol=2e-2 * grads_a[name].abs().max().item(),
                                   msg=name)


@pytest.mark.parametrize("flags, vendor, bf16_gemm", [
    ({"avx512f", "avx512_bf16", "amx_bf16"}, "GenuineIntel", True),  # AMX tiles
    ({"avx512f", "avx512_bf16"}, "GenuineIntel", False),  # Xeon, no AMX: MKL's fp32 GEMM is faster (73 vs 40 ms)
    ({"avx512f", "avx512_bf16"}, "AuthenticAMD", True),  # EPYC Zen 5: MKL's non-Intel path (6.7 vs 31 ms)
    ({"avx2", "fma"}, "AuthenticAMD", False),  # no bf16 dot product: oneDNN emulates it (1.2 s vs 31 ms)
    ({"avx512f", "avx512_bf16"}, "", False),  # vendor unknown: the fp32 route, right on every CPU but AMD's
])
def test_auto_gemm_rule(flags, vendor, bf16_gemm):
    """model.bf16_matmul=auto per CPU; the times are [2048x512]x[512x1536], one thread (gpt3d/model/linear.py)."""
    assert bf16_gemm_beats_fp32(flags, vendor) == bf16_gemm
