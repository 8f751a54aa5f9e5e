"""Lazy access to the compiled extension `gpt3d._C` (built from csrc/ by setup.py).

The extension is optional: when it is missing (not built, or built for another torch) every op falls back to its
PyTorch reference, and the first fallback warns once.
"""
from __future__ import annotations

import functools
import warnings


@functools.lru_cache(maxsize=None)
def extension():
    """The loaded module `gpt3d._C`, or None. Importing it registers the ops under torch.ops.gpt3d_C."""
    try:
        import torch  # noqa: F401  (the extension links against torch's libraries)
        from gpt3d import _C
    except ImportError as exc:  # not built, or built against another torch
        extension.error = str(exc)
        return None
    return _C


extension.error = ""


@functools.lru_cache(maxsize=None)
def warn_fallback(op: str) -> None:
    """Warn once per op that the fused kernel is unavailable and the PyTorch reference runs instead."""
    reason = extension.error or "the op has no kernel for this device/dtype"
    warnings.warn(f"gpt3d: fused kernel for {op} unavailable ({reason}); using the PyTorch reference. "
                  f"Build it with: pip install --no-build-isolation -e .", RuntimeWarning, stacklevel=3)


def has_op(name: str) -> bool:
    """True when the extension is loaded and registers torch.ops.gpt3d_C.<name>."""
    if extension() is None:
        return False
    import torch
    return hasattr(torch.ops.gpt3d_C, name)
