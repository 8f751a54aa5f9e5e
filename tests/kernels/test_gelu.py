"""The fused tanh-approximation GELU (csrc/gelu/) against torch's own gelu(approximate="tanh") (the reference),
forward and backward, fp32 and bf16, on every CPU path this machine has; special values; checks of bad input; the
fp64 fallback; and its registration (opcheck: schema, fake kernel, C++ autograd)."""
import pytest
import torch
import torch.nn.functional as F

from gpt3d import kernels
from gpt3d.kernels import reference

from .conftest import assert_close
from .test_isa_paths import isa  # noqa: F401  (fixture: every CPU path of this machine)

# element counts around the vector widths (4 portable, 8 AVX2, 16 AVX-512) and the 16384-element OpenMP blocks
SIZES = [1, 3, 4, 7, 8, 15, 16, 17, 33, 16384 + 21]


def _inputs(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Normal activations plus the tails (|x| up to 12, where the gate saturates) and exact zeros."""
    x = torch.randn(n) * 3
    x[:: 7] *= 4
    x[:: 11] = 0.0
    return x.to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_matches_torch_on_every_path(isa, dtype):  # noqa: F811
    for n in SIZES:
        x = _inputs(n, dtype)
        y, y_ref = kernels.gelu_tanh(x), F.gelu(x, approximate="tanh")
        assert_close(y, y_ref, f"{isa} gelu y, n {n}")
        dy = torch.randn_like(y)
        (dx,), (dx_ref,) = torch.autograd.grad(y, x, dy), torch.autograd.grad(y_ref, x, dy)
        assert_close(dx, dx_ref, f"{isa} gelu dx, n {n}")


def test_gelu_any_shape_and_non_contiguous_input():
    x = torch.randn(6, 5, 40).transpose(0, 2)  # non-contiguous
    torch.testing.assert_close(kernels.gelu_tanh(x), F.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    empty = torch.empty(0, 3)
    assert kernels.gelu_tanh(empty).shape == (0, 3)


def test_gelu_special_values():
    x = torch.tensor([0.0, -0.0, float("nan"), float("inf"), 30.0, -30.0, 1e-30, -1e-30])
    y = kernels.gelu_tanh(x)
    assert y[0] == 0 and y[1] == 0 and torch.isnan(y[2]) and y[3] == float("inf")
    assert y[4] == 30.0  # the gate is exactly 1 in fp32
    assert -1e-30 < y[5].item() <= 0  # torch: 0.5 x (1 + tanh) is -0 here; the gate form gives a tiny negative
    torch.testing.assert_close(y[6:], 0.5 * x[6:])  # gelu(x) ~ x / 2 near 0


def test_fp64_gradcheck_goes_through_reference_silently(recwarn):
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.gelu_tanh, (x,))
    assert torch.equal(kernels.gelu_tanh(x), reference.gelu_tanh(x))
    assert not [w for w in recwarn if "gpt3d" in str(w.message)]


def test_reference_impl_is_torch_gelu():
    x = torch.randn(100)
    assert torch.equal(kernels.gelu_tanh(x, impl="reference"), F.gelu(x, approximate="tanh"))


@pytest.mark.parametrize("call, error, message", [
    (lambda: kernels.gelu_tanh(torch.ones(3, dtype=torch.int64)), TypeError, "must be floating point"),
    (lambda: kernels.gelu_tanh(torch.ones(3), impl="fast"), ValueError, "impl must be"),
    (lambda: torch.ops.gpt3d_C.gelu_tanh_fwd(torch.ones(3, dtype=torch.float16)), RuntimeError,
     "takes float32 or bfloat16"),
    (lambda: torch.ops.gpt3d_C.gelu_tanh_bwd(torch.ones(2, 3), torch.ones(2, 4)), RuntimeError,
     r"dy has shape \[2, 3\] but x has shape \[2, 4\]"),
    (lambda: torch.ops.gpt3d_C.gelu_tanh_bwd(torch.ones(3, dtype=torch.bfloat16), torch.ones(3)), RuntimeError,
     "dy has dtype"),
])
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_validates_schema_fake_and_autograd(dtype):
    x = torch.randn(3, 20, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.gpt3d_C.gelu_tanh_fwd.default, (x,))
    torch.library.opcheck(torch.ops.gpt3d_C.gelu_tanh_bwd.default, (torch.randn(3, 20, dtype=dtype), x.detach()))
