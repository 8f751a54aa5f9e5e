"""Helpers of the sparse attention tests: the dense golden attention and the CPU kernel instances to cover."""
from __future__ import annotations

import sys

import torch.nn.functional as F


def dense_masked_attention(q, k, v, mask, scale):
    """Golden attention in float64: torch SDPA with the element mask [heads, s, s] (True = attend)."""
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=scale)


def cpu_isas() -> list[str]:
    """The instruction-set instances of the CPU kernel this machine can run (widest first)."""
    flags = open("/proc/cpuinfo").read() if sys.platform.startswith("linux") else ""
    isas = []
    if all(f in flags for f in (" avx512f", " avx512vl", " avx512dq", " avx512bw")):
        isas.append("avx512")
    if " avx2" in flags and " fma" in flags:
        isas.append("avx2")
    return isas + ["generic"]
