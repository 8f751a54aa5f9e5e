"""Fused scaled masked / causal softmax: forward and gradient match gpt3d.kernels.reference for every kind of mask."""
import pytest
import torch

from gpt3d import kernels
from gpt3d.kernels import reference

from .conftest import assert_close

DTYPES = [torch.float32, torch.bfloat16]
KEYS = [1, 7, 33, 1000, 2050]


def check_parity(fused_fn, ref_fn, scores):
    scores = scores.detach().requires_grad_()
    y, y_ref = fused_fn(scores), ref_fn(scores)
    assert_close(y, y_ref, "y")
    assert not torch.isnan(y).any()
    dy = torch.randn_like(y)
    (dx,), (dx_ref,) = torch.autograd.grad(y, scores, dy), torch.autograd.grad(y_ref, scores, dy)
    assert_close(dx, dx_ref, "dscores")
    return y, dx


def random_mask(shape, p=0.3):
    return torch.rand(shape) < p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sk", KEYS)
def test_masked_softmax_matches_reference(sk, dtype):
    scores = (torch.randn(2, 3, 5, sk) * 4).to(dtype)
    mask = random_mask((2, 1, 5, sk))
    check_parity(lambda s: kernels.scaled_masked_softmax(s, mask, 0.3),
                 lambda s: reference.scaled_masked_softmax(s, mask, 0.3), scores)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sk", KEYS)
def test_unmasked_softmax_matches_reference(sk, dtype):
    scores = (torch.randn(1, 2, 3, sk) * 4).to(dtype)
    check_parity(lambda s: kernels.scaled_masked_softmax(s, None, 1.7),
                 lambda s: reference.scaled_masked_softmax(s, None, 1.7), scores)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sq, sk", [(1, 1), (7, 7), (33, 33), (40, 1000), (20, 7), (2050, 2050)])
def test_causal_softmax_matches_reference(sq, sk, dtype):
    heads = 1 if sq * sk > 10**6 else 2
    scores = (torch.randn(1, heads, sq, sk) * 4).to(dtype)
    check_parity(lambda s: kernels.scaled_causal_softmax(s, 0.125),
                 lambda s: reference.scaled_causal_softmax(s, 0.125), scores)


def test_causal_softmax_accepts_3d_scores_and_ignores_hidden_keys():
    scores = torch.randn(4, 9, 9)
    hidden = reference.causal_mask(9, 9)
    poisoned = scores.masked_fill(hidden, float("nan"))  # never read: the causal mask is implicit
    y = kernels.scaled_causal_softmax(poisoned, 0.5)
    assert_close(y, reference.scaled_causal_softmax(scores, 0.5))
    assert torch.all(y[:, hidden] == 0)


@pytest.mark.parametrize("mask_shape", [(2, 3, 6, 40), (1, 3, 6, 40), (2, 1, 6, 40), (1, 1, 6, 40), (6, 40)])
def test_mask_broadcasting(mask_shape):
    scores = torch.randn(2, 3, 6, 40)
    mask = random_mask(mask_shape, 0.5)
    full = mask.reshape((1,) * (4 - mask.dim()) + mask_shape).expand(2, 3, 6, 40)
    check_parity(lambda s: kernels.scaled_masked_softmax(s, mask, 0.9),
                 lambda s: reference.scaled_masked_softmax(s, full, 0.9), scores)


def test_expanded_and_non_contiguous_mask_and_scores():
    base = torch.randn(6, 40, 3, 2)
    scores = base.permute(3, 2, 0, 1)  # [2, 3, 6, 40], non-contiguous
    mask = random_mask((40, 6)).t().expand(2, 3, 6, 40)  # stride-0 batch/heads, transposed inner dims
    assert not scores.is_contiguous() and not mask.is_contiguous()
    check_parity(lambda s: kernels.scaled_masked_softmax(s, mask, 0.5),
                 lambda s: reference.scaled_masked_softmax(s, mask, 0.5), scores)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_are_zero_not_nan(dtype):
    scores = torch.randn(2, 2, 4, 33).to(dtype)
    mask = random_mask((2, 2, 4, 33))
    mask[0, 1, 2] = True
    mask[1, :, 0] = True
    y, dx = check_parity(lambda s: kernels.scaled_masked_softmax(s, mask, 1.0),
                         lambda s: reference.scaled_masked_softmax(s, mask, 1.0), scores)
    for row in (y[0, 1, 2], y[1, :, 0], dx[0, 1, 2], dx[1, :, 0]):
        assert torch.all(row == 0)
    # More queries than keys: the first causal rows see no key at all.
    scores = torch.randn(1, 1, 6, 3)
    y = kernels.scaled_causal_softmax(scores, 1.0)
    assert torch.all(y[0, 0, :3] == 0) and not torch.isnan(y).any()
    assert_close(y, reference.scaled_causal_softmax(scores, 1.0))


def test_rows_sum_to_one_with_large_scores():
    scores = torch.randn(1, 1, 8, 500) * 1e4
    y = kernels.scaled_masked_softmax(scores, None, 1.0)
    torch.testing.assert_close(y.sum(-1), torch.ones(1, 1, 8))


def test_fp64_gradcheck_goes_through_reference_silently(recwarn):
    scores = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    mask = random_mask((1, 1, 3, 5))
    assert torch.autograd.gradcheck(lambda s: kernels.scaled_masked_softmax(s, mask, 0.7), (scores,))
    assert torch.autograd.gradcheck(lambda s: kernels.scaled_causal_softmax(s, 0.7), (scores,))
    assert not [w for w in recwarn if "gpt3d" in str(w.message)]


@pytest.mark.parametrize("call, error, message", [
    (lambda: kernels.scaled_masked_softmax(torch.ones(2, 3, 4), None, 1.0), ValueError, "must be \\[batch, heads"),
    (lambda: kernels.scaled_masked_softmax(torch.ones(1, 1, 2, 2, dtype=torch.int32), None, 1.0), TypeError,
     "must be floating point"),
    (lambda: kernels.scaled_masked_softmax(torch.ones(2, 3, 4, 5), torch.ones(2, 3, 4, 6, dtype=torch.bool), 1.0),
     ValueError, "the mask must be \\[2 or 1, 3 or 1, 4, 5\\]"),
    (lambda: kernels.scaled_masked_softmax(torch.ones(2, 3, 4, 5), torch.ones(1, 1, 4, 5), 1.0), TypeError,
     "mask must be a bool tensor"),
    (lambda: kernels.scaled_causal_softmax(torch.ones(5), 1.0), ValueError, "must be \\[..., sq, sk\\]"),
    (lambda: kernels.scaled_causal_softmax(torch.ones(2, 2), 1.0, impl="cuda"), ValueError, "impl must be"),
])
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: torch.ops.gpt3d_C.scaled_masked_softmax_fwd(torch.ones(1, 1, 2, 2, dtype=torch.float16), None, 1.0),
     "takes float32 or bfloat16"),
    (lambda: torch.ops.gpt3d_C.scaled_masked_softmax_fwd(torch.ones(2, 3, 4, 5),
                                                         torch.ones(3, 1, 4, 5, dtype=torch.bool), 1.0),
     r"mask has shape \[3, 1, 4, 5\] but scores have shape \[2, 3, 4, 5\]"),
    (lambda: torch.ops.gpt3d_C.scaled_masked_softmax_fwd(torch.ones(2, 3, 4, 5), torch.ones(2, 3, 4, 5), 1.0),
     "must be bool"),
    (lambda: torch.ops.gpt3d_C.scaled_causal_softmax_fwd(torch.ones(3), 1.0), r"must be \[..., sq, sk\]"),
    (lambda: torch.ops.gpt3d_C.scaled_softmax_bwd(torch.ones(2, 3), torch.ones(2, 4), 1.0, False),
     r"dy has shape \[2, 3\] but y has shape \[2, 4\]"),
])
def test_cpp_op_checks_reject_bad_input(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_device_without_kernel_is_rejected_by_the_op_checks():
    scores = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="mask is on meta but scores are on cpu"):
        torch.ops.gpt3d_C.scaled_masked_softmax_fwd(scores, torch.ones(1, 1, 2, 2, dtype=torch.bool, device="meta"),
                                                    1.0)
