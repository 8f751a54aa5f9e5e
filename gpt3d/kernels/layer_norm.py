"""Fused LayerNorm and residual-add + LayerNorm (csrc/layer_norm/), with autograd and fake kernels for torch.compile.

    layer_norm(x, weight, bias, eps, impl="fused") -> y   (impl: auto | fused | reference)
    add_layer_norm(x, residual, weight, bias, eps, impl="fused") -> (x + residual, y)

x is [..., hidden]; weight and bias are [hidden] in x's dtype or float32 (None = ones / zeros). Statistics are fp32;
bf16 outputs are rounded once. impl="reference" (or no kernel for x's device/dtype) runs gpt3d.kernels.reference;
impl="auto" takes the fused op where it is faster on this CPU (gpt3d/kernels/_select.py).
The C++ ops are torch.ops.gpt3d_C.{layer_norm_fwd, add_layer_norm_fwd, layer_norm_bwd}; their backward is
first-order only (no double backward).
"""
from __future__ import annotations

import torch

from gpt3d.kernels import _ext, _select, reference

_AVAILABLE = _ext.has_op("layer_norm_fwd")
_DEVICES = _select.kernel_devices()


def check_layer_norm_args(op: str, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                          bias: torch.Tensor, eps: float) -> None:
    """Raise one clear error for bad arguments, before any work."""
    _select.require_floating(op, "x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"gpt3d.kernels.{op}: x has shape {tuple(x.shape)}; it needs a non-empty last dimension "
                         f"(the one normalised)")
    hidden = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        _select.require_floating(op, name, t)
        if t.shape != (hidden,):
            raise ValueError(f"gpt3d.kernels.{op}: {name} has shape {tuple(t.shape)} but x's last dimension is "
                             f"{hidden}; {name} must be [{hidden}]")
        if t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"gpt3d.kernels.{op}: {name} has dtype {t.dtype} but x has {x.dtype}; "
                            f"{name} must have x's dtype or float32")
        if t.device != x.device:
            raise ValueError(f"gpt3d.kernels.{op}: {name} is on {t.device} but x is on {x.device}; "
                             f"move them to the same device")
    if bias.dtype != weight.dtype:
        raise TypeError(f"gpt3d.kernels.{op}: bias has dtype {bias.dtype} but weight has {weight.dtype}; cast one")
    if residual is not None:
        _select.require_floating(op, "residual", residual)
        if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
            raise ValueError(f"gpt3d.kernels.{op}: residual is {tuple(residual.shape)} {residual.dtype} on "
                             f"{residual.device} but x is {tuple(x.shape)} {x.dtype} on {x.device}; they must match")
    if not eps > 0:
        raise ValueError(f"gpt3d.kernels.{op}: eps must be positive, got {eps}")


def _default_affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None):
    hidden = x.shape[-1] if x.dim() else 0
    if weight is None:
        weight = torch.ones(hidden, dtype=x.dtype, device=x.device)
    if bias is None:
        bias = torch.zeros(hidden, dtype=weight.dtype, device=x.device)
    return weight, bias


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5,
               impl: str = "fused") -> torch.Tensor:
    """LayerNorm over the last dimension of x."""
    _select.check_impl(impl, "layer_norm")
    _select.require_floating("layer_norm", "x", x)
    weight, bias = _default_affine(x, weight, bias)
    check_layer_norm_args("layer_norm", x, None, weight, bias, eps)
    if _select.resolve(impl, "layer_norm", x) == "fused" and _select.use_fused("layer_norm", _AVAILABLE, _DEVICES, x):
        return torch.ops.gpt3d_C.layer_norm_fwd(x, weight, bias, float(eps))[0]
    return reference.layer_norm(x, weight, bias, eps)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                   bias: torch.Tensor | None, eps: float = 1e-5,
                   impl: str = "fused") -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, layer_norm(x + residual)) in one pass: the pre-LN block's residual stream and its normed input."""
    _select.check_impl(impl, "add_layer_norm")
    _select.require_floating("add_layer_norm", "x", x)
    weight, bias = _default_affine(x, weight, bias)
    check_layer_norm_args("add_layer_norm", x, residual, weight, bias, eps)
    if _select.resolve(impl, "add_layer_norm", x) == "fused" and _select.use_fused("add_layer_norm", _AVAILABLE, _DEVICES, x):
        total, y, _, _ = torch.ops.gpt3d_C.add_layer_norm_fwd(x, residual, weight, bias, float(eps))
        return total, y
    return reference.add_layer_norm(x, residual, weight, bias, eps)


def _register() -> None:
    """Fake kernels (shapes only, for torch.compile / meta tensors) of the C++ ops; their autograd is registered in
    C++ (csrc/layer_norm/layer_norm_autograd.cpp)."""

    @torch.library.register_fake("gpt3d_C::layer_norm_fwd")
    def _layer_norm_fwd_fake(x, weight, bias, eps):
        check_layer_norm_args("layer_norm", x, None, weight, bias, eps)
        stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
        return x.new_empty(x.shape), stats, torch.empty_like(stats)

    @torch.library.register_fake("gpt3d_C::add_layer_norm_fwd")
    def _add_layer_norm_fwd_fake(x, residual, weight, bias, eps):
        check_layer_norm_args("add_layer_norm", x, residual, weight, bias, eps)
        stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
        return x.new_empty(x.shape), x.new_empty(x.shape), stats, torch.empty_like(stats)

    @torch.library.register_fake("gpt3d_C::layer_norm_bwd")
    def _layer_norm_bwd_fake(dy, dsum, x, mean, rstd, weight):
        return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


if _AVAILABLE:
    _register()
