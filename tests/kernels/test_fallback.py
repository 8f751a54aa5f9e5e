"""The reference path: impl="reference" runs gpt3d.kernels.reference exactly; tensors the kernels do not take fall back
to it (fp64 silently, others with a one-time warning); the portable (non-AVX-512) CPU path matches too."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gpt3d import kernels
from gpt3d.kernels import _ext, reference

from .conftest import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def all_ops(dtype, impl):
    torch.manual_seed(1)
    x, r = torch.randn(5, 40, dtype=dtype), torch.randn(5, 40, dtype=dtype)
    w, b = torch.randn(40, dtype=dtype), torch.randn(40, dtype=dtype)
    scores, mask = torch.randn(2, 2, 6, 40, dtype=dtype), torch.rand(2, 1, 6, 40) < 0.3
    return {"layer_norm": kernels.layer_norm(x, w, b, 1e-5, impl=impl),
            "add_layer_norm": kernels.add_layer_norm(x, r, w, b, 1e-5, impl=impl),
            "masked_softmax": kernels.scaled_masked_softmax(scores, mask, 0.3, impl=impl),
            "causal_softmax": kernels.scaled_causal_softmax(scores, 0.3, impl=impl)}, (x, r, w, b, scores, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_impl_is_the_reference_and_matches_fused(dtype):
    ref, (x, r, w, b, scores, mask) = all_ops(dtype, "reference")
    fused, _ = all_ops(dtype, "fused")
    assert torch.equal(ref["layer_norm"], reference.layer_norm(x, w, b, 1e-5))
    assert torch.equal(ref["masked_softmax"], reference.scaled_masked_softmax(scores, mask, 0.3))
    assert torch.equal(ref["causal_softmax"], reference.scaled_causal_softmax(scores, 0.3))
    for name in ref:
        for got, want in zip(*(o if isinstance(o, tuple) else (o,) for o in (fused[name], ref[name]))):
            assert_close(got, want, name)


def test_fp16_falls_back_to_reference_with_one_warning():
    _ext.warn_fallback.cache_clear()
    x, w, b = torch.randn(3, 8, dtype=torch.float16), torch.ones(8, dtype=torch.float16), torch.zeros(8, dtype=torch.float16)
    with pytest.warns(RuntimeWarning, match="fused kernel for layer_norm unavailable"):
        y = kernels.layer_norm(x, w, b, 1e-5)
    assert torch.equal(y, reference.layer_norm(x, w, b, 1e-5))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call must not warn again
        kernels.layer_norm(x, w, b, 1e-5)


def test_device_without_kernel_falls_back_to_reference():
    _ext.warn_fallback.cache_clear()
    scores = torch.empty(2, 3, 4, 5, device="meta")
    with pytest.warns(RuntimeWarning, match="scaled_causal_softmax unavailable"):
        y = kernels.scaled_causal_softmax(scores, 1.0)
    assert y.device.type == "meta" and y.shape == scores.shape


def test_portable_cpu_path_matches_reference():
    """GPT3D_CPU_ISA=portable forces the non-AVX-512 kernels (what a CPU without AVX-512 runs)."""
    script = textwrap.dedent("""
        import torch
        from gpt3d import kernels
        from gpt3d.kernels import reference
        assert kernels.cpu_isa() == "portable", kernels.cpu_isa()
        torch.manual_seed(0)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            for hidden in (1, 33, 1000):
                x = torch.randn(3, hidden, dtype=dtype, requires_grad=True)
                r = torch.randn(3, hidden, dtype=dtype)
                w = torch.randn(hidden, dtype=dtype, requires_grad=True)
                b = torch.randn(hidden, dtype=dtype, requires_grad=True)
                for fn, ref in ((kernels.add_layer_norm, reference.add_layer_norm),):
                    got, want = fn(x, r, w, b, 1e-5)[1], ref(x, r, w, b, 1e-5)[1]
                    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * 4)
                    g = torch.randn_like(got)
                    for a, c in zip(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(want, (x, w, b), g)):
                        torch.testing.assert_close(a.float(), c.float(), rtol=tol, atol=tol * 8)
                s = torch.randn(2, 2, 5, hidden, dtype=dtype, requires_grad=True)
                mask = torch.rand(2, 1, 5, hidden) < 0.3
                mask[0, 0, 1] = True
                for got, want in ((kernels.scaled_masked_softmax(s, mask, 0.5), reference.scaled_masked_softmax(s, mask, 0.5)),
                                  (kernels.scaled_causal_softmax(s, 0.5), reference.scaled_causal_softmax(s, 0.5))):
                    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
                    g = torch.randn_like(got)
                    a, = torch.autograd.grad(got, s, g)
                    c, = torch.autograd.grad(want, s, g)
                    torch.testing.assert_close(a.float(), c.float(), rtol=tol, atol=tol * 4)
        print("portable ok")
    """)
    env = dict(os.environ, GPT3D_CPU_ISA="portable", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "portable ok" in out.stdout, out.stderr[-3000:]


def test_this_machine_takes_the_avx512_path_when_it_has_avx512():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    has = all(f" {f}" in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))
    if os.environ.get("GPT3D_CPU_ISA") != "portable":
        assert kernels.cpu_isa() == ("avx512" if has else "portable")
