"""gpt3d's fused kernels (csrc/), each a torch.library custom op with a fake kernel and autograd, so they work under
torch.compile; each has a pure-PyTorch twin in gpt3d.kernels.reference.

`impl` is "fused" (the compiled kernel when gpt3d._C is built and has one for the tensor's device/dtype: float32 and
bfloat16 on CPU, plus CUDA in a CUDA build), "reference", or "auto" (fused only where it beats PyTorch eager on this
CPU's code path: the table in gpt3d/kernels/_select.py). The fused path falls back to the reference on its own: fp64
silently (gradcheck), anything else with a one-time warning. Importing this package never needs the extension.
"""
from __future__ import annotations

from gpt3d.kernels import reference
from gpt3d.kernels._ext import extension
from gpt3d.kernels.causal_attention import block_causal_attention
from gpt3d.kernels.cross_entropy import cross_entropy_grad_, logsumexp_rows
from gpt3d.kernels.gelu import gelu_tanh
from gpt3d.kernels.layer_norm import add_layer_norm, layer_norm
from gpt3d.kernels.softmax import scaled_causal_softmax, scaled_masked_softmax

__all__ = ["layer_norm", "add_layer_norm", "gelu_tanh", "scaled_masked_softmax", "scaled_causal_softmax",
           "block_causal_attention", "logsumexp_rows", "cross_entropy_grad_", "reference",
           "fused_available", "cpu_isa"]


def fused_available() -> bool:
    """True when the compiled extension is loaded with the LayerNorm and softmax ops."""
    from gpt3d.kernels import _ext
    return _ext.has_op("layer_norm_fwd") and _ext.has_op("scaled_masked_softmax_fwd")


def cpu_isa() -> str:
    """The CPU code path the kernels take now: "avx512", "avx2" (AVX2+FMA) or "portable"; "none" when the extension is
    not built. The default is the widest path the CPU has; the environment variable GPT3D_CPU_ISA (auto | avx512 |
    avx2 | portable), read on every kernel call, forces one (an error when the CPU lacks it)."""
    if extension() is None:
        return "none"
    import torch
    return torch.ops.gpt3d_C.cpu_isa()
