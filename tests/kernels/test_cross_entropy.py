"""The fused cross-entropy kernels (csrc/cross_entropy/): the row log-sum-exp against torch.logsumexp and the
in-place gradient against scale * (softmax - one-hot), both in float64, on every CPU path this machine has, at widths
that exercise full vectors and tails, with padded columns and labels of another vocabulary shard; special values;
the model's loss against F.cross_entropy; bad input; and the ops' registration (opcheck)."""
import pytest
import torch
import torch.nn.functional as F

from gpt3d import kernels
from gpt3d.model.cross_entropy import cross_entropy

from .test_isa_paths import isa  # noqa: F401  (fixture: every CPU path of this machine)

WIDTHS = [(1, 1), (7, 7), (9, 8), (17, 17), (40, 33), (515, 515), (1000, 936), (24, 0)]  # (cols, real_cols)
# fp32: the kernels' vector exp is within 2 ulp and the row sums run in another order than float64's; bf16 logits
# are exact in fp32, so only the bf16 gradient's rounding (2^-8 relative) adds.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=1e-2, atol=1e-4)}


def reference_grad(logits64, real_cols, labels, scale):
    """scale * (softmax - one-hot) over the first real_cols columns, 0 beyond, in float64."""
    g = torch.zeros_like(logits64)
    if real_cols:
        g[:, :real_cols] = torch.softmax(logits64[:, :real_cols], dim=-1)
    for r, label in enumerate(labels.tolist()):
        if 0 <= label < real_cols:
            g[r, label] -= 1.0
    return g * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logsumexp_and_grad_match_float64_on_every_path(isa, dtype):
    for cols, real_cols in WIDTHS:
        rows = 6
        logits = (torch.randn(rows, cols) * 4).to(dtype)
        lse = kernels.logsumexp_rows(logits, real_cols, impl="fused")
        want = torch.logsumexp(logits.double()[:, :real_cols], dim=-1)
        assert lse.dtype == torch.float32
        torch.testing.assert_close(lse.double(), want, rtol=1e-6, atol=1e-6, msg=lambda m: f"{isa} {cols}: {m}")
        # labels: in range, and outside it (a shard that does not hold the label)
        labels = torch.tensor([0, real_cols - 1, -1, real_cols, 3 % max(real_cols, 1), cols + 5])
        scale = torch.tensor(0.37)
        got = kernels.cross_entropy_grad_(logits.clone(), lse, labels, scale, real_cols, impl="fused")
        expected = reference_grad(logits.double(), real_cols, labels, 0.37)
        torch.testing.assert_close(got.double(), expected, **TOL[dtype], msg=lambda m: f"{isa} {cols}: {m}")
        assert torch.all(got[:, real_cols:] == 0)


def test_fused_and_reference_agree_in_place():
    logits = torch.randn(50, 300) * 3
    labels = torch.randint(0, 280, (50,))
    for impl in ("fused", "reference"):
        work = logits.clone()
        lse = kernels.logsumexp_rows(work, 280, impl=impl)
        out = kernels.cross_entropy_grad_(work, lse, labels, torch.tensor(0.5), 280, impl=impl)
        assert out.data_ptr() == work.data_ptr()  # in place: the logits' storage holds the gradient
        torch.testing.assert_close(out.double(), reference_grad(logits.double(), 280, labels, 0.5), rtol=1e-5,
                                   atol=1e-7)


def test_special_values_follow_torch_logsumexp(isa):
    inf, nan = float("inf"), float("nan")
    for width in (5, 16, 37):
        rows = torch.randn(4, width)
        rows[0, width // 2] = nan
        rows[1, width - 1] = inf
        rows[2] = -inf
        rows[3, 0] = -inf
        got = kernels.logsumexp_rows(rows, width, impl="fused")
        torch.testing.assert_close(got, torch.logsumexp(rows, dim=-1), equal_nan=True)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_loss_matches_f_cross_entropy(impl, dtype):
    vocab, padded = 1000, 1024
    logits = (torch.randn(64, padded) * 2).to(dtype)
    labels = torch.randint(0, vocab, (64,))
    leaf = logits.clone().requires_grad_()
    loss = cross_entropy(leaf.clone(), labels, vocab, impl=impl)  # the clone is overwritten by the backward
    (grad,) = torch.autograd.grad(loss, leaf)
    ref_leaf = logits.double().requires_grad_()
    ref = F.cross_entropy(ref_leaf[:, :vocab], labels)
    (ref_grad,) = torch.autograd.grad(ref, ref_leaf)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])


def test_bad_input_is_one_clear_error():
    logits, lse = torch.randn(4, 10), torch.zeros(4)
    labels, scale = torch.zeros(4, dtype=torch.long), torch.tensor(1.0)
    op_lse, op_bwd = torch.ops.gpt3d_C.logsumexp_rows, torch.ops.gpt3d_C.cross_entropy_bwd_
    with pytest.raises(RuntimeError, match=r"logits must be \[rows, cols\], got shape \[2, 2, 10\]"):
        op_lse(torch.randn(2, 2, 10), 10)
    with pytest.raises(RuntimeError, match=r"real_cols must lie in \[0, 10\] \(the logits' columns\), got 11"):
        op_lse(logits, 11)
    with pytest.raises(RuntimeError, match="logits must be contiguous"):
        op_lse(torch.randn(10, 4).t(), 4)
    with pytest.raises(RuntimeError, match="logits has dtype Double but the fused kernel takes float32 or bfloat16"):
        op_lse(logits.double(), 10)
    with pytest.raises(RuntimeError, match=r"labels must be \[4\] \(one per row of logits\), got shape \[3\]"):
        op_bwd(logits, lse, labels[:3], scale, 10)
    with pytest.raises(RuntimeError, match="labels must be Long, got Int"):
        op_bwd(logits, lse, labels.int(), scale, 10)
    with pytest.raises(RuntimeError, match="lse must be Float, got Double"):
        op_bwd(logits, lse.double(), labels, scale, 10)
    with pytest.raises(RuntimeError, match=r"scale must be one float32 value \(a 0-dim tensor\), got shape \[2\]"):
        op_bwd(logits, lse, labels, torch.ones(2), 10)
    with pytest.raises(ValueError, match=r"logits must be \[rows, cols\], got shape \(2, 2, 10\); flatten"):
        kernels.logsumexp_rows(torch.randn(2, 2, 10), 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_validates_schema_and_fake_kernels(dtype):
    logits = torch.randn(5, 40, dtype=dtype)
    lse = torch.ops.gpt3d_C.logsumexp_rows(logits, 33)
    torch.library.opcheck(torch.ops.gpt3d_C.logsumexp_rows.default, (logits, 33))
    torch.library.opcheck(torch.ops.gpt3d_C.cross_entropy_bwd_.default,
                          (logits.clone(), lse, torch.tensor([0, 5, 32, 33, -1]), torch.tensor(0.2), 33))
