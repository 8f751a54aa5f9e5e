"""Fused scaled masked softmax for attention scores (csrc/softmax/), with autograd and fake kernels for torch.compile.

    scaled_masked_softmax(scores, mask, scale, impl="fused") -> probs
    scaled_causal_softmax(scores, scale, impl="fused") -> probs

probs = softmax(scale * scores) over the last dimension, ignoring keys where the bool mask is True; masked keys and
fully masked rows give exactly 0 (never NaN). scores is [b, h, sq, sk] (causal: any [..., sq, sk]); mask is
[b or 1, h or 1, sq, sk] (a [sq, sk] or 3-D mask is read as broadcasting over the leading dimensions) or None. The
causal mask is implicit (never a tensor): query q sees keys [0, q + 1 + sk - sq). Backward keeps only the output.
"""
from __future__ import annotations

import torch

from gpt3d.kernels import _ext, _select, reference

_AVAILABLE = _ext.has_op("scaled_masked_softmax_fwd")
_DEVICES = _select.kernel_devices()


def check_scores(op: str, scores: torch.Tensor, causal: bool) -> None:
    _select.require_floating(op, "scores", scores)
    if causal and scores.dim() < 2:
        raise ValueError(f"gpt3d.kernels.{op}: scores must be [..., sq, sk], got shape {tuple(scores.shape)}")
    if not causal and scores.dim() != 4:
        raise ValueError(f"gpt3d.kernels.{op}: scores must be [batch, heads, sq, sk], got shape "
                         f"{tuple(scores.shape)}")


def normalize_mask(op: str, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask as 4-D [b or 1, h or 1, sq, sk] bool, or a clear error."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"gpt3d.kernels.{op}: mask must be a bool tensor (True = masked out), got {got}; "
                        f"convert it with .bool() (or == 0 if 1 means keep)")
    b, h, sq, sk = scores.shape
    if 2 <= mask.dim() <= 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)) if mask.dim() < 4 else mask
    if (mask.dim() != 4 or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, h)
            or tuple(mask.shape[2:]) != (sq, sk)):
        raise ValueError(f"gpt3d.kernels.{op}: mask has shape {tuple(mask.shape)} but scores have shape "
                         f"{tuple(scores.shape)}; the mask must be [{b} or 1, {h} or 1, {sq}, {sk}]")
    if mask.device != scores.device:
        raise ValueError(f"gpt3d.kernels.{op}: mask is on {mask.device} but scores are on {scores.device}; "
                         f"move them to the same device")
    return mask


def scaled_masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, scale: float,
                          impl: str = "fused") -> torch.Tensor:
    """softmax(scale * scores) over the keys where mask is False (mask None = every key)."""
    _select.check_impl(impl, "scaled_masked_softmax")
    check_scores("scaled_masked_softmax", scores, causal=False)
    mask = normalize_mask("scaled_masked_softmax", scores, mask)
    if _select.resolve(impl, "scaled_masked_softmax", scores) == "fused" and _select.use_fused("scaled_masked_softmax", _AVAILABLE, _DEVICES, scores):
        return torch.ops.gpt3d_C.scaled_masked_softmax_fwd(scores, mask, float(scale))
    return reference.scaled_masked_softmax(scores, mask, scale)


def scaled_causal_softmax(scores: torch.Tensor, scale: float, impl: str = "fused") -> torch.Tensor:
    """softmax(scale * scores) under the implicit causal mask; masked keys are 0."""
    _select.check_impl(impl, "scaled_causal_softmax")
    check_scores("scaled_causal_softmax", scores, causal=True)
    if _select.resolve(impl, "scaled_causal_softmax", scores) == "fused" and _select.use_fused("scaled_causal_softmax", _AVAILABLE, _DEVICES, scores):
        return torch.ops.gpt3d_C.scaled_causal_softmax_fwd(scores, float(scale))
    return reference.scaled_causal_softmax(scores, scale)


def _register() -> None:
    """Fake kernels (shapes only, for torch.compile / meta tensors) and autograd of the C++ ops."""

    @torch.library.register_fake("gpt3d_C::scaled_masked_softmax_fwd")
    def _masked_fwd_fake(scores, mask, scale):
        check_scores("scaled_masked_softmax", scores, causal=False)
        normalize_mask("scaled_masked_softmax", scores, mask)
        return scores.new_empty(scores.shape)

    @torch.library.register_fake("gpt3d_C::scaled_causal_softmax_fwd")
    def _causal_fwd_fake(scores, scale):
        check_scores("scaled_causal_softmax", scores, causal=True)
        return scores.new_empty(scores.shape)

    @torch.library.register_fake("gpt3d_C::scaled_softmax_bwd")
    def _bwd_fake(dy, y, scale, causal):
        return y.new_empty(y.shape)

    def _masked_setup(ctx, inputs, output):
        ctx.scale = inputs[2]
        ctx.save_for_backward(output)

    def _masked_backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return torch.ops.gpt3d_C.scaled_softmax_bwd(dy, y, ctx.scale, False), None, None

    def _causal_setup(ctx, inputs, output):
        ctx.scale = inputs[1]
        ctx.save_for_backward(output)

    def _causal_backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return torch.ops.gpt3d_C.scaled_softmax_bwd(dy, y, ctx.scale, True), None

    torch.library.register_autograd("gpt3d_C::scaled_masked_softmax_fwd", _masked_backward, setup_context=_masked_setup)
    torch.library.register_autograd("gpt3d_C::scaled_causal_softmax_fwd", _causal_backward, setup_context=_causal_setup)


if _AVAILABLE:
    _register()
