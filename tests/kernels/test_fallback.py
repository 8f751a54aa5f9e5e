"""The reference path: impl="reference" runs gpt3d.kernels.reference exactly; tensors the kernels do not take fall back
to it (fp64 silently, others with a one-time warning)."""
import os

import pytest
import torch

from gpt3d import kernels
from gpt3d.kernels import _ext, reference

from .conftest import assert_close



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


def test_this_machine_takes_its_widest_path_by_default(monkeypatch):
    """Without GPT3D_CPU_ISA the kernels take the widest path the CPU has (every path is checked in test_isa_paths.py)."""
    monkeypatch.delenv("GPT3D_CPU_ISA", raising=False)
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        assert kernels.cpu_isa() == "avx512"
    else:
        assert kernels.cpu_isa() == ("avx2" if {"avx2", "fma"} <= flags else "portable")
