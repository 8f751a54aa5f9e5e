"""gpt3d/model/gemm.py: fp32 GEMMs by oneDNN, forward and backward, against fp64 products; auto's rule per CPU."""
import os
import subprocess
import sys

import pytest
import torch

from gpt3d.model import gemm

needs_onednn = pytest.mark.skipif(not (torch.backends.mkldnn.is_available()
                                       and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
                                  reason="this torch has no oneDNN linear op")


def _close(actual, expected, torch_fp32):
    """`actual` is as close to the fp64 product as torch's own fp32 GEMM (`torch_fp32`) is, within 4x: both
    accumulate in fp32, in different orders (over K=512 random terms both err by ~1e-5 of the output's scale)."""
    ours, torchs = (actual.double() - expected).abs().max(), (torch_fp32.double() - expected).abs().max()
    assert ours <= 4 * torchs + 1e-12, (ours, torchs)


@needs_onednn
def test_onednn_linear_forward_and_backward_match_fp64():
    torch.manual_seed(0)
    x = torch.randn(4, 96, 512, requires_grad=True)
    w = torch.randn(384, 512, requires_grad=True)
    b = torch.randn(384, requires_grad=True)
    dy = torch.randn(4, 96, 384)
    y = gemm._OneDnnLinear.apply(x, w, b)
    y.backward(dy)
    x64, w64, b64, dy64 = (t.detach().double() for t in (x, w, b, dy))
    x32, w32, b32 = x.detach(), w.detach(), b.detach()
    _close(y, x64 @ w64.t() + b64, torch.nn.functional.linear(x32, w32, b32))
    _close(x.grad, dy64 @ w64, dy @ w32)
    _close(w.grad, dy64.reshape(-1, 384).t() @ x64.reshape(-1, 512), dy.reshape(-1, 384).t() @ x32.reshape(-1, 512))
    _close(b.grad, dy64.reshape(-1, 384).sum(0), dy.reshape(-1, 384).sum(0))


@needs_onednn
@pytest.mark.parametrize("accumulate", [False, True])
def test_mm_into_writes_or_adds(monkeypatch, accumulate):
    monkeypatch.setattr(gemm, "fp32_gemm_library", lambda: "onednn")
    torch.manual_seed(1)
    a, b = torch.randn(1024, 256).t(), torch.randn(1024, 128)  # a transposed view, as the weight-gradient GEMM's
    out = torch.randn(256, 128)
    expected = torch.addmm(out, a, b) if accumulate else a @ b
    exact = (out.double() if accumulate else 0) + a.double() @ b.double()
    gemm.mm_into(out, a, b, accumulate)
    _close(out, exact, expected)


@needs_onednn
@pytest.mark.parametrize("out_dim, in_dim, transposed", [(1024, 64, True), (64, 1024, False), (256, 256, False)])
def test_weight_gradient_orientation(monkeypatch, out_dim, in_dim, transposed):
    """dy^T x with many more outputs than inputs is taken as (x^T dy)^T, which copies x^T rather than dy^T (the output
    head's gradient), and is returned as a transposed view; otherwise as it is. Both match the fp64 product."""
    monkeypatch.setattr(gemm, "fp32_gemm_library", lambda: "onednn")
    torch.manual_seed(2)
    dy, x = torch.randn(512, out_dim), torch.randn(512, in_dim)
    product = gemm.mm(dy.t(), x)
    assert product.shape == (out_dim, in_dim)
    assert product.is_contiguous() != transposed
    _close(product, dy.double().t() @ x.double(), dy.t() @ x)


def test_other_dtypes_take_torch(monkeypatch):
    monkeypatch.setattr(gemm, "fp32_gemm_library", lambda: "onednn")
    a, b = torch.randn(8, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(gemm.mm(a, b), a @ b)


@pytest.mark.parametrize("flags, vendor, onednn", [
    ({"avx2", "avx512f"}, "AuthenticAMD", True),  # EPYC Zen 4/5: MKL's non-Intel path stops at AVX2
    ({"avx2", "avx512f"}, "GenuineIntel", False),  # Xeon: MKL at full width
    ({"avx2", "fma"}, "AuthenticAMD", False),  # AVX2 only: MKL's AVX2 path is as wide as the CPU
    ({"avx2", "avx512f"}, "", False),  # vendor unknown
])
def test_auto_rule(flags, vendor, onednn):
    assert gemm.onednn_beats_mkl(flags, vendor) == onednn


def _library(env_value):
    env = dict(os.environ, GPT3D_FP32_GEMM=env_value)
    return subprocess.run([sys.executable, "-c", "from gpt3d.model import gemm; print(gemm.fp32_gemm_library())"],
                          env=env, capture_output=True, text=True)


def test_environment_choice():
    assert _library("torch").stdout.strip() == "torch"
    if torch.backends.mkldnn.is_available():
        assert _library("onednn").stdout.strip() == "onednn"
    bad = _library("mkl")
    assert bad.returncode != 0
    assert "GPT3D_FP32_GEMM must be one of ('auto', 'torch', 'onednn'), got 'mkl' (unset it for auto)" in bad.stderr


def test_autocast_keeps_torchs_linear(monkeypatch):
    """Under CPU autocast F.linear computes in bf16; the oneDNN fp32 route must not bypass that."""
    monkeypatch.setattr(gemm, "fp32_gemm_library", lambda: "onednn")
    x, w = torch.randn(8, 16), torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gemm.linear(x, w, None).dtype == torch.bfloat16
    assert gemm.linear(x, w, None).dtype == torch.float32
