"""CUDA kernels against references at GPT-3 shapes, forward and backward, in float32, bfloat16 and float16.

Shapes: LayerNorm rows of d_model = 12288 (2 x 2048 tokens); the tanh GELU over 4096 x 12288; the cross-entropy's
log-sum-exp and gradient over 2048 x 50304 logits; softmax over 96 heads x 2048 x 2048 scores; block-sparse attention
with 96 heads x d_head 128 at T = 2048 (the `fixed` layout, blocks of 32 and 64).

Truth is the same inputs (already rounded to the dtype) through float64 math on the GPU: torch's own LayerNorm and
tanh GELU, the softmax formula of gpt3d.kernels.reference evaluated in float64, and a dense masked attention written
here in float64 for the sparse kernel. The error of a result is max |got - truth| / max |truth|, the error at the
tensor's own scale. Tolerances per dtype:
    float32   1e-4     fp32 accumulation over 12288-wide rows, 2048-key rows and 2048-row parameter gradients
    bfloat16  3.2e-2   4 steps of bfloat16's 2^-7 relative spacing (the kernels round once, from fp32)
    float16   4e-3     4 steps of float16's 2^-10 relative spacing
The PyTorch reference of gpt3d.kernels.reference in the same dtype (what runs without the fused kernels) is measured
against the same truth and recorded beside ours.

Each test also checks that the public function ran the fused CUDA op: its forward output equals the raw
torch.ops.gpt3d_C call bit for bit.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpt3d import kernels
from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.kernels import _select, reference
from gpt3d.kernels.sparse_attention import block_sparse_attention, compile_layout
from gpt3d.sparse.layout import expand_layout_to_mask, make_layout

from .conftest import requires_cuda
from .records import record

pytestmark = requires_cuda

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3.2e-2, torch.float16: 4e-3}
D_MODEL, TOKENS, HEADS, D_HEAD, T = 12288, 4096, 96, 128, 2048
DEVICE = "cuda"
EPS = 1e-5


def dtype_id(value) -> str:
    return str(value).replace("torch.", "") if isinstance(value, torch.dtype) else str(value)


@pytest.fixture(autouse=True)
def seeded(cuda_extension):
    torch.manual_seed(0)
    yield
    torch.cuda.empty_cache()


def rel_err(got: torch.Tensor, truth: torch.Tensor) -> float:
    scale = truth.abs().max().item()
    return (got.double() - truth).abs().max().item() / (scale if scale > 0 else 1.0)


def check(op: str, dtype: torch.dtype, got: dict, truth: dict, eager: dict) -> None:
    """Every tensor within the dtype's tolerance of the truth; the numbers are recorded for the report."""
    failures = []
    for name, value in got.items():
        err, eager_err = rel_err(value, truth[name]), rel_err(eager[name], truth[name])
        assert value.dtype == eager[name].dtype, f"{op} {name}: dtype {value.dtype} != {eager[name].dtype}"
        record("parity", op=op, dtype=str(dtype).replace("torch.", ""), tensor=name, err=err, eager_err=eager_err,
               tol=TOLERANCE[dtype])
        if not err <= TOLERANCE[dtype]:
            failures.append(f"{name}: error {err:.3g} > {TOLERANCE[dtype]:g} (PyTorch reference: {eager_err:.3g})")
    assert not failures, f"{op} {dtype}: " + "; ".join(failures)


def grads(outputs, inputs, seeds):
    return torch.autograd.grad(outputs, inputs, seeds)


def assert_fused(dtype: torch.dtype) -> None:
    assert DEVICE in _select.kernel_devices() and dtype in _select.KERNEL_DTYPES[DEVICE], (
        f"no fused CUDA kernel is registered for {dtype}")


def layer_norm_inputs(dtype):
    x = (torch.randn(2, TOKENS // 2, D_MODEL, device=DEVICE) * 2 + 0.5).to(dtype).requires_grad_()
    w = (1 + 0.3 * torch.randn(D_MODEL, device=DEVICE)).to(dtype).requires_grad_()
    b = (0.3 * torch.randn(D_MODEL, device=DEVICE)).to(dtype).requires_grad_()
    dy = torch.randn(x.shape, device=DEVICE).to(dtype)
    return x, w, b, dy


def f64_layer_norm_with_grads(x, w, b, dy):
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = F.layer_norm(x64, (x.shape[-1],), w64, b64, EPS)
    return y64.detach(), grads(y64, (x64, w64, b64), dy.double())


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_layer_norm(dtype):
    assert_fused(dtype)
    x, w, b, dy = layer_norm_inputs(dtype)
    y = kernels.layer_norm(x, w, b, EPS)
    assert torch.equal(y, torch.ops.gpt3d_C.layer_norm_fwd(x, w, b, EPS)[0]), "the fused CUDA op did not run"
    y_ref = reference.layer_norm(x, w, b, EPS)
    y64, g64 = f64_layer_norm_with_grads(x, w, b, dy)
    names = ("y", "dx", "dweight", "dbias")
    got = dict(zip(names, (y, *grads(y, (x, w, b), dy))))
    eager = dict(zip(names, (y_ref, *grads(y_ref, (x, w, b), dy))))
    check("layer_norm", dtype, got, dict(zip(names, (y64, *g64))), eager)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_add_layer_norm(dtype):
    assert_fused(dtype)
    x, w, b, dy = layer_norm_inputs(dtype)
    r = torch.randn(x.shape, device=DEVICE).to(dtype).requires_grad_()
    dtotal = torch.randn(x.shape, device=DEVICE).to(dtype)
    total, y = kernels.add_layer_norm(x, r, w, b, EPS)
    assert torch.equal(y, torch.ops.gpt3d_C.add_layer_norm_fwd(x, r, w, b, EPS)[1]), "the fused CUDA op did not run"
    assert torch.equal(total, x + r), "x + residual must be the dtype's own sum, exactly"
    total_ref, y_ref = reference.add_layer_norm(x, r, w, b, EPS)
    # Truth: LayerNorm in float64 of the stored (rounded) sum, which is what both implementations normalise.
    y64, (dsum64, dw64, db64) = f64_layer_norm_with_grads(total.detach(), w, b, dy)
    dx64 = dsum64 + dtotal.double()
    names = ("y", "dx", "dresidual", "dweight", "dbias")
    got = dict(zip(names, (y, *grads((total, y), (x, r, w, b), (dtotal, dy)))))
    eager = dict(zip(names, (y_ref, *grads((total_ref, y_ref), (x, r, w, b), (dtotal, dy)))))
    check("add_layer_norm", dtype, got, dict(zip(names, (y64, dx64, dx64, dw64, db64))), eager)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_gelu_tanh(dtype):
    """The MLP's activation at a GPT-3 layer's size (4096 tokens x d_model 12288 of the 4 x d_model hidden)."""
    assert_fused(dtype)
    x = (torch.randn(TOKENS, D_MODEL, device=DEVICE) * 3).to(dtype).requires_grad_()
    dy = torch.randn(x.shape, device=DEVICE).to(dtype)
    y = kernels.gelu_tanh(x)
    assert torch.equal(y, torch.ops.gpt3d_C.gelu_tanh_fwd(x)), "the fused CUDA op did not run"
    y_ref = reference.gelu_tanh(x)
    x64 = x.detach().double().requires_grad_()
    y64 = F.gelu(x64, approximate="tanh")
    (dx64,) = grads(y64, (x64,), dy.double())
    got = {"y": y, "dx": grads(y, (x,), dy)[0]}
    eager = {"y": y_ref, "dx": grads(y_ref, (x,), dy)[0]}
    check("gelu_tanh", dtype, got, {"y": y64.detach(), "dx": dx64}, eager)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_cross_entropy(dtype):
    """The LM loss's row log-sum-exp and in-place gradient at GPT-3's vocabulary (50257 real of 50304 padded
    columns) for 2048 tokens; labels include one outside the shard (-1), which subtracts no one-hot."""
    assert_fused(dtype)
    vocab, padded = 50257, 50304
    logits = (torch.randn(2048, padded, device=DEVICE) * 3).to(dtype)
    labels = torch.randint(0, vocab, (2048,), device=DEVICE)
    labels[5] = -1
    scale = torch.tensor(1.0 / 2048, device=DEVICE)
    lse = kernels.logsumexp_rows(logits, vocab)
    assert torch.equal(lse, torch.ops.gpt3d_C.logsumexp_rows(logits, vocab)), "the fused CUDA op did not run"
    grad = kernels.cross_entropy_grad_(logits.clone(), lse, labels, scale, vocab)
    lse_ref = reference.logsumexp_rows(logits, vocab)
    grad_ref = reference.cross_entropy_grad_(logits.clone(), lse_ref, labels, scale, vocab)
    x64 = logits.double()
    lse64 = torch.logsumexp(x64[:, :vocab], dim=-1)
    grad64 = torch.zeros_like(x64)
    grad64[:, :vocab] = torch.softmax(x64[:, :vocab], dim=-1)
    rows = torch.arange(2048, device=DEVICE)[labels >= 0]
    grad64[rows, labels[labels >= 0]] -= 1.0
    grad64 *= 1.0 / 2048
    check("cross_entropy", dtype, {"lse": lse, "dlogits": grad}, {"lse": lse64, "dlogits": grad64},
          {"lse": lse_ref, "dlogits": grad_ref})


def softmax_case(dtype, masked: bool):
    scores = (torch.randn(1, HEADS, T, T, device=DEVICE) * 4).to(dtype).requires_grad_()
    dy = torch.randn(scores.shape, device=DEVICE).to(dtype)
    scale = 1.0 / math.sqrt(D_HEAD)
    if masked:  # padding-style: the last 100 keys hidden for every query, plus 5% random holes and one empty row
        mask = torch.rand(1, 1, T, T, device=DEVICE) < 0.05
        mask[..., T - 100:] = True
        mask[..., 7, :] = True
    else:
        mask = reference.causal_mask(T, T, DEVICE)[None, None]
    return scores, dy, scale, mask


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_scaled_softmax(dtype, kind):
    assert_fused(dtype)
    scores, dy, scale, mask = softmax_case(dtype, kind == "masked")
    if kind == "masked":
        y = kernels.scaled_masked_softmax(scores, mask, scale)
        raw = torch.ops.gpt3d_C.scaled_masked_softmax_fwd(scores, mask, scale)
        y_ref = reference.scaled_masked_softmax(scores, mask, scale)
    else:
        y = kernels.scaled_causal_softmax(scores, scale)
        raw = torch.ops.gpt3d_C.scaled_causal_softmax_fwd(scores, scale)
        y_ref = reference.scaled_causal_softmax(scores, scale)
    assert torch.equal(y, raw), "the fused CUDA op did not run"
    s64 = scores.detach().double().requires_grad_()
    y64 = reference.scaled_masked_softmax(s64, mask, scale)  # its math in float64: masked keys and empty rows give 0
    (ds64,) = grads(y64, (s64,), dy.double())
    got = {"y": y, "dscores": grads(y, (scores,), dy)[0]}
    eager = {"y": y_ref, "dscores": grads(y_ref, (scores,), dy)[0]}
    check(f"scaled_{kind}_softmax", dtype, got, {"y": y64.detach(), "dscores": ds64}, eager)


def dense_attention_f64(q, k, v, mask, scale):
    """Independent truth: dense causal attention under the element mask of the layout, in float64."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1), v)


@pytest.mark.parametrize("dtype,block", [(d, 32) for d in DTYPES] + [(torch.bfloat16, 64)], ids=dtype_id)
def test_block_sparse_attention(dtype, block):
    assert_fused(dtype)
    cfg = SparseAttentionConfig(layout="fixed", block=block)
    layout = make_layout(cfg, HEADS, T)
    compiled = compile_layout(layout, block, DEVICE)
    q, k, v = (torch.randn(1, HEADS, T, D_HEAD, device=DEVICE).to(dtype).requires_grad_() for _ in range(3))
    dout = torch.randn(q.shape, device=DEVICE).to(dtype)
    scale = 1.0 / math.sqrt(D_HEAD)
    out = block_sparse_attention(q, k, v, compiled, block)
    raw = torch.ops.gpt3d_C.sparse_attention_forward(q, k, v, compiled.row_ptr, compiled.col_idx, block, scale)[0]
    assert torch.equal(out, raw), "the fused CUDA op did not run"
    out_ref = block_sparse_attention(q, k, v, compiled, block, impl="reference")
    mask = expand_layout_to_mask(layout.to(DEVICE), block, T)[None]
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64 = dense_attention_f64(q64, k64, v64, mask, scale)
    g64 = grads(out64, (q64, k64, v64), dout.double())
    names = ("out", "dq", "dk", "dv")
    got = dict(zip(names, (out, *grads(out, (q, k, v), dout))))
    eager = dict(zip(names, (out_ref, *grads(out_ref, (q, k, v), dout))))
    check(f"block_sparse_attention(block={block})", dtype, got, dict(zip(names, (out64.detach(), *g64))), eager)
