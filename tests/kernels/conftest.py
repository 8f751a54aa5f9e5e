"""Kernel tests use the extension built in place (`python setup.py build_ext --inplace`); they build nothing themselves
and FAIL when it is missing, so a broken build can never pass as "skipped"."""
import pytest
import torch

from gpt3d import kernels
from gpt3d.kernels import _ext


@pytest.fixture(autouse=True)
def require_extension():
    assert kernels.fused_available(), (
        f"gpt3d._C with the LayerNorm/softmax ops is not built ({_ext.extension.error or 'ops missing'}); "
        f"run `python setup.py build_ext --inplace` in the repository root")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "", scale: float | None = None) -> None:
    """Parity: fp32 to a few ulps of `scale` (default: the reference's largest magnitude, at least 1); bf16 to ~2 ulps
    (both computed in fp32, rounded once)."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if scale is None:
        scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    if expected.dtype == torch.bfloat16:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=1.6e-2, atol=1e-2 * scale, msg=what or None)
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=2e-5 * scale, msg=what or None)
