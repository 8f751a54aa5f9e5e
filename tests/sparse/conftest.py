"""Shared fixtures of the sparse attention tests: the built extension (required) and the dense golden attention."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt3d.kernels import _ext


@pytest.fixture
def fused_kernel():
    """Fail (not skip) when the extension with the sparse attention op is missing: the fused tests must run."""
    if not _ext.has_op("sparse_attention_forward"):
        pytest.fail("gpt3d._C with torch.ops.gpt3d_C.sparse_attention_forward is not built "
                    f"({_ext.extension.error or 'op missing'}); run: cd /work/main && python setup.py build_ext --inplace")


def dense_masked_attention(q, k, v, mask, scale):
    """Golden attention in float64: torch SDPA with the element mask [heads, s, s] (True = attend)."""
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=scale)


def cpu_isas() -> list[str]:
    """The instruction-set instances of the CPU kernel this machine can run (widest first)."""
    import sys
    flags = open("/proc/cpuinfo").read() if sys.platform.startswith("linux") else ""
    isas = []
    if all(f in flags for f in (" avx512f", " avx512vl", " avx512dq", " avx512bw")):
        isas.append("avx512")
    if " avx2" in flags and " fma" in flags:
        isas.append("avx2")
    return isas + ["generic"]
