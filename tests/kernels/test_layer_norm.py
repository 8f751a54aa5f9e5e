"""Fused LayerNorm and add + LayerNorm: forward and every gradient match gpt3d.kernels.reference."""
import pytest
import torch

from gpt3d import kernels
from gpt3d.kernels import reference

from .conftest import assert_close

HIDDEN = [1, 7, 33, 768, 1000, 2050]
DTYPES = [torch.float32, torch.bfloat16]


def make(shape, dtype, w_dtype=None):
    hidden = shape[-1]
    x = (torch.randn(shape) * 3 + 0.5).to(dtype).requires_grad_()
    w = (1 + 0.5 * torch.randn(hidden)).to(w_dtype or dtype).requires_grad_()
    b = (0.5 * torch.randn(hidden)).to(w_dtype or dtype).requires_grad_()
    return x, w, b


def grads(outputs, inputs, seed_grads):
    return torch.autograd.grad(outputs, inputs, seed_grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_layer_norm_forward_and_grads_match_reference(hidden, dtype):
    x, w, b = make((3, 5, hidden), dtype)
    y = kernels.layer_norm(x, w, b, 1e-5)
    y_ref = reference.layer_norm(x, w, b, 1e-5)
    assert_close(y, y_ref, "y")
    dy = torch.randn_like(y)
    # hidden == 1: dx is exactly 0 in exact arithmetic; both sides return rounding noise amplified by rstd = eps^-0.5.
    noise = 10.0 if hidden == 1 else None
    for name, got, want in zip(("dx", "dweight", "dbias"), grads(y, (x, w, b), dy), grads(y_ref, (x, w, b), dy)):
        assert_close(got, want, name, scale=noise)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1, 33, 1000, 2050])
def test_add_layer_norm_forward_and_grads_match_reference(hidden, dtype):
    x, w, b = make((4, hidden), dtype)
    r = torch.randn(4, hidden).to(dtype).requires_grad_()
    total, y = kernels.add_layer_norm(x, r, w, b, 1e-5)
    total_ref, y_ref = reference.add_layer_norm(x, r, w, b, 1e-5)
    assert torch.equal(total, total_ref), "x + residual must be exact"
    assert_close(y, y_ref, "y")
    d_total, dy = torch.randn_like(total), torch.randn_like(y)
    got = grads((total, y), (x, r, w, b), (d_total, dy))
    want = grads((total_ref, y_ref), (x, r, w, b), (d_total, dy))
    for name, g, r_ in zip(("dx", "dresidual", "dweight", "dbias"), got, want):
        assert_close(g, r_, name, scale=10.0 if hidden == 1 else None)  # hidden 1: see the test above


def test_bf16_input_with_fp32_weights():
    x, w, b = make((6, 130), torch.bfloat16, w_dtype=torch.float32)
    y, y_ref = kernels.layer_norm(x, w, b, 1e-5), reference.layer_norm(x, w, b, 1e-5)
    assert y.dtype == torch.bfloat16
    assert_close(y, y_ref, "y")
    dy = torch.randn_like(y)
    for name, got, want in zip(("dx", "dweight", "dbias"), grads(y, (x, w, b), dy), grads(y_ref, (x, w, b), dy)):
        assert got.dtype == want.dtype
        assert_close(got, want, name)


def test_one_row_and_many_leading_dims():
    for shape in [(1, 768), (2, 3, 4, 33)]:
        x, w, b = make(shape, torch.float32)
        assert_close(kernels.layer_norm(x, w, b, 1e-5), reference.layer_norm(x, w, b, 1e-5), str(shape))


def test_non_contiguous_inputs_and_gradients():
    base, w, b = make((33, 8, 40), torch.float32)
    x = base.transpose(0, 1)[:, ::2]  # [8, 17, 40], strided
    assert not x.is_contiguous()
    y, y_ref = kernels.layer_norm(x, w, b, 1e-5), reference.layer_norm(x, w, b, 1e-5)
    assert_close(y, y_ref, "y")
    dy = torch.randn(40, 17, 8).permute(2, 1, 0)  # non-contiguous incoming gradient
    for name, got, want in zip(("dx", "dw", "db"), grads(y, (base, w, b), dy), grads(y_ref, (base, w, b), dy)):
        assert_close(got, want, name)


def test_saved_statistics_are_fp32_mean_and_rstd():
    x = torch.randn(4, 50, dtype=torch.bfloat16)
    w, b = torch.ones(50, dtype=torch.bfloat16), torch.zeros(50, dtype=torch.bfloat16)
    _, mean, rstd = torch.ops.gpt3d_C.layer_norm_fwd(x, w, b, 1e-5)
    xf = x.float()
    assert mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(mean, xf.mean(-1))
    torch.testing.assert_close(rstd, (xf.var(-1, unbiased=False) + 1e-5).rsqrt())


def test_none_weight_and_bias_mean_identity_affine():
    x = torch.randn(3, 20)
    assert_close(kernels.layer_norm(x, None, None, 1e-5), torch.nn.functional.layer_norm(x, (20,), eps=1e-5))


def test_fp64_gradcheck_goes_through_reference_silently(recwarn):
    x, w, b = make((3, 9), torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5), (x, w, b))
    r = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, r, w, b: kernels.add_layer_norm(x, r, w, b, 1e-5), (x, r, w, b))
    assert not [w for w in recwarn if "gpt3d" in str(w.message)]


@pytest.mark.parametrize("call, error, message", [
    (lambda: kernels.layer_norm(torch.ones(2, 4, dtype=torch.int64), None, None), TypeError, "must be floating point"),
    (lambda: kernels.layer_norm(torch.ones(2, 4), torch.ones(5), torch.ones(5)), ValueError, "weight must be [4]"),
    (lambda: kernels.layer_norm(torch.ones(2, 4), torch.ones(4), torch.ones(3)), ValueError, "bias must be [4]"),
    (lambda: kernels.layer_norm(torch.ones(2, 4), torch.ones(4, dtype=torch.float64), torch.ones(4)), TypeError,
     "weight must have x's dtype or float32"),
    (lambda: kernels.layer_norm(torch.ones(2, 4), None, None, eps=0.0), ValueError, "eps must be positive"),
    (lambda: kernels.layer_norm(torch.ones(2, 4), None, None, impl="triton"), ValueError, "impl must be"),
    (lambda: kernels.add_layer_norm(torch.ones(2, 4), torch.ones(3, 4), None, None), ValueError, "they must match"),
])
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


@pytest.mark.parametrize("args, message", [
    ((torch.ones(2, 4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64),
      1e-5), "takes float32 or bfloat16"),
    ((torch.ones(2, 4), torch.ones(5), torch.ones(5), 1e-5), r"weight has shape \[5\] but x's last dimension is 4"),
    ((torch.ones(2, 4), torch.ones(4), torch.ones(4, dtype=torch.bfloat16), 1e-5), "bias has dtype"),
    ((torch.ones(2, 4), torch.ones(4), torch.ones(4), -1.0), "eps must be positive"),
])
def test_cpp_op_checks_reject_bad_input(args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.gpt3d_C.layer_norm_fwd(*args)


def test_cpp_backward_checks_reject_wrong_statistics():
    x, w = torch.randn(3, 8), torch.ones(8)
    with pytest.raises(RuntimeError, match="pass the statistics saved by forward"):
        torch.ops.gpt3d_C.layer_norm_bwd(x, None, x, torch.zeros(4), torch.ones(3), w)


def test_device_without_kernel_is_rejected_by_the_op_checks():
    # This build has no kernel for 'meta' (as a CPU-only build has none for CUDA): mixing it with CPU tensors
    # reaches the op's fake kernel, whose checks name the problem.
    with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
        torch.ops.gpt3d_C.layer_norm_fwd(torch.ones(2, 4), torch.ones(4, device="meta"), torch.ones(4, device="meta"),
                                         1e-5)
