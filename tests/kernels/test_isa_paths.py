"""Every CPU code path this machine can run (AVX-512, AVX2+FMA, portable), forced with GPT3D_CPU_ISA, matches
gpt3d.kernels.reference for LayerNorm, add + LayerNorm and the masked / causal softmax, forward and backward, in fp32
and bf16 (and the C++ blocked attention against float64 attention in fp32), at widths that exercise the full vectors
and tails of the 4-lane (portable), 8-lane (AVX2) and 16-lane (AVX-512) paths."""
import sys

import pytest
import torch

from gpt3d import kernels
from gpt3d.kernels import reference

from .conftest import assert_close


def machine_isas() -> list[str]:
    """The paths this CPU supports (read from /proc/cpuinfo independently of the extension), widest first."""
    flags = set(open("/proc/cpuinfo").read().split()) if sys.platform.startswith("linux") else set()
    isas = []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        isas.append("avx512")
    if {"avx2", "fma"} <= flags:
        isas.append("avx2")
    return isas + ["portable"]


@pytest.fixture(params=machine_isas())
def isa(request, monkeypatch):
    monkeypatch.setenv("GPT3D_CPU_ISA", request.param)
    assert kernels.cpu_isa() == request.param
    return request.param


def grads(outputs, inputs, seeds):
    return torch.autograd.grad(outputs, inputs, seeds)


@pytest.mark.parametrize("dtype, w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                            (torch.bfloat16, torch.float32)])
def test_layer_norms_match_reference_on_every_path(isa, dtype, w_dtype):
    # bf16 rows go two vectors at a time, four in the statistics passes, then a masked tail: 29, 53 and 165 take all
    # three loops on the portable (4 lanes), avx2 (8) and avx512 (16) paths.
    for hidden in (1, 6, 7, 9, 17, 29, 40, 53, 165, 515):
        x = (torch.randn(5, hidden) * 3 + 0.5).to(dtype).requires_grad_()
        r = torch.randn(5, hidden).to(dtype).requires_grad_()
        w = (1 + 0.5 * torch.randn(hidden)).to(w_dtype).requires_grad_()
        b = (0.5 * torch.randn(hidden)).to(w_dtype).requires_grad_()
        noise = 10.0 if hidden == 1 else None  # hidden 1: dx is rounding noise times rstd (see test_layer_norm.py)
        y, y_ref = kernels.layer_norm(x, w, b, 1e-5), reference.layer_norm(x, w, b, 1e-5)
        assert_close(y, y_ref, f"{isa} layer_norm y, hidden {hidden}")
        dy = torch.randn_like(y)
        for name, got, want in zip(("dx", "dw", "db"), grads(y, (x, w, b), dy), grads(y_ref, (x, w, b), dy)):
            assert_close(got, want, f"{isa} layer_norm {name}, hidden {hidden}", scale=noise)
        (s, y), (s_ref, y_ref) = kernels.add_layer_norm(x, r, w, b, 1e-5), reference.add_layer_norm(x, r, w, b, 1e-5)
        assert torch.equal(s, s_ref), f"{isa}: x + residual must be exact (hidden {hidden})"
        assert_close(y, y_ref, f"{isa} add_layer_norm y, hidden {hidden}")
        seeds = (torch.randn_like(s), torch.randn_like(y))
        for name, got, want in zip(("dx", "dresidual", "dw", "db"), grads((s, y), (x, r, w, b), seeds),
                                   grads((s_ref, y_ref), (x, r, w, b), seeds)):
            assert_close(got, want, f"{isa} add_layer_norm {name}, hidden {hidden}", scale=noise)


def test_bf16_rounding_of_every_path_matches_torch_bit_for_bit(isa):
    """add_layer_norm's sum is x + residual computed in fp32 and rounded to bf16 by the path's vector store: ties in
    both directions (round half to even), overflow to inf, inf - inf, NaN, signed zeros and denormals. Each value sits
    at every lane of a full vector and of a tail (widths 5 to 40), and must equal torch's bf16 x + residual bit for bit;
    NaN must stay NaN (torch writes the canonical 0x7fc0, the kernels keep the sign and payload, quieted)."""
    one, ulp = 1.0, 2.0 ** -7  # bf16 keeps 8 significant bits: 1 + 2^-8 is the tie between 1 and 1 + 2^-7
    big = 3.3895313892515355e38  # bf16's largest finite value
    pairs = [(one, 2.0 ** -8), (one + ulp, 2.0 ** -8), (-one, -(2.0 ** -8)), (-(one + ulp), -(2.0 ** -8)),
             (one, 2.0 ** -8 + 2.0 ** -16), (big, big), (-big, -big), (float("inf"), float("-inf")),
             (float("nan"), 1.0), (-0.0, -0.0), (0.0, -0.0), (9.2e-41, 9.2e-41), (-1e-39, 2e-40), (2.0, 3.0),
             (float("inf"), 1.0), (1e-38, -1.1e-38)]
    xs = torch.tensor([p[0] for p in pairs]).to(torch.bfloat16)
    rs = torch.tensor([p[1] for p in pairs]).to(torch.bfloat16)
    for width in (5, 8, 16, 17, 40):
        for shift in range(len(pairs)):
            idx = (torch.arange(width) + shift) % len(pairs)
            x, r = xs[idx].reshape(1, width), rs[idx].reshape(1, width)
            s, _ = kernels.add_layer_norm(x, r, None, None, 1e-5, impl="fused")
            want = x + r
            nan = torch.isnan(want)
            assert torch.equal(torch.isnan(s), nan), (isa, width, shift)
            assert torch.equal(s[~nan].view(torch.int16), want[~nan].view(torch.int16)), (isa, width, shift)


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_bf16_layer_norm_nans_and_infs_match_reference_on_every_path(isa, w_dtype):
    """bf16 rows holding a NaN, an inf, both infinities, or values whose sum overflows, and a NaN weight: outputs and
    input gradients are NaN exactly where the reference's are, and match it elsewhere. The fp32 NaN weight has every
    payload bit set (0x7fffffff): rounded without the NaN check it would become -0.0, and the kernels skip that check
    only for rows with finite statistics and NaN-free fp32 weights."""
    torch.manual_seed(0)
    cols = 40  # a pair of vectors and a tail on every path
    x = torch.randn(7, cols).to(torch.bfloat16)
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    x[3, :] = 3e38  # the row's sum overflows
    x[4, 7], x[4, 8] = float("-inf"), float("inf")
    x[5, 30:] = 1e18  # large values, finite statistics (at 1e30 the variance overflows: torch gives NaN, the kernels beta)
    w = (1 + 0.5 * torch.randn(cols)).to(w_dtype)
    b = (0.5 * torch.randn(cols)).to(w_dtype)
    w[0] = 0.0
    w_nan = w.clone()
    if w_dtype == torch.float32:
        w_nan.view(torch.int32)[10] = 0x7FFFFFFF
    else:
        w_nan[10] = float("nan")
    for weights in ((w, b), (w_nan, b)):
        xs = x.clone().requires_grad_()
        got = kernels.layer_norm(xs, *weights, 1e-5)
        want = reference.layer_norm(x.clone().requires_grad_(), *weights, 1e-5)
        dy = torch.randn_like(got)
        (dx,) = torch.autograd.grad(got, xs, dy)
        xr = x.clone().requires_grad_()
        (dx_ref,) = torch.autograd.grad(reference.layer_norm(xr, *weights, 1e-5), xr, dy)
        for name, a, e in (("y", got, want), ("dx", dx, dx_ref)):
            nan = torch.isnan(e)
            assert torch.equal(torch.isnan(a), nan), f"{isa} {name}: NaN where the reference has none, or not where it has"
            assert_close(a[~nan], e[~nan], f"{isa} {name} outside the NaNs")
        r = torch.randn_like(x)
        (s, y), (s_ref, y_ref) = (kernels.add_layer_norm(x, r, *weights, 1e-5),
                                  reference.add_layer_norm(x, r, *weights, 1e-5))
        assert torch.equal(torch.isnan(s), torch.isnan(s_ref)) and torch.equal(torch.isnan(y), torch.isnan(y_ref)), isa


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_residual", [False, True])
def test_bf16_layer_norm_rows_do_not_depend_on_their_neighbours(isa, w_dtype, with_residual):
    """bf16 forward rows run each row's last pass inside the next row's statistics loop, so a row is normalised while
    the next is summed (with a residual, after the next sum row is written). Every row, its saved mean and rstd (and
    its x + residual) must come out bit for bit as when it is normalised alone (a one-row call), at 1 and 2 threads
    (which change where each thread's first row falls); a row whose statistics cancel (a mean 1e3 standard deviations
    from the shift: the two-pass fallback) and a NaN row sit between ordinary ones."""
    torch.manual_seed(0)
    # Two pairs of vectors, a lone pair and a part vector on each path (a pair: 2 x 16, 2 x 8 or 2 x 4 lanes)
    cols = {"avx512": 101, "avx2": 53, "portable": 27}[isa]
    x = torch.randn(9, cols)
    x[3] = 1e3 + 0.01 * torch.randn(cols)
    x[3, 0] = x[3, cols // 2] = x[3, -1] = 0.0  # shift 0, far from the mean: the fallback
    x[6, 5] = float("nan")
    x = x.to(torch.bfloat16)
    w = (1 + 0.5 * torch.randn(cols)).to(w_dtype)
    b = (0.5 * torch.randn(cols)).to(w_dtype)
    if with_residual:  # a residual of zeros keeps the rows above as the sums
        residual = torch.zeros_like(x)
        residual[1] = torch.randn(cols).to(torch.bfloat16)
        def forward(rows, i):
            return torch.ops.gpt3d_C.add_layer_norm_fwd(rows, residual[i], w, b, 1e-5)
    else:
        def forward(rows, i):
            return torch.ops.gpt3d_C.layer_norm_fwd(rows, w, b, 1e-5)
    alone = [torch.cat(parts) for parts in zip(*(forward(x[i:i + 1], slice(i, i + 1)) for i in range(len(x))))]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for got, want in zip(forward(x, slice(None)), alone):  # (x + residual,) y, mean, rstd
                bits = torch.int16 if got.dtype == torch.bfloat16 else torch.int32
                assert torch.equal(got.view(bits), want.view(bits)), (isa, n)
    finally:
        torch.set_num_threads(threads)


def test_bf16_layer_norm_statistics_match_fp64_when_the_shift_is_far_from_the_mean(isa):
    """bf16 rows take their statistics in one pass, shifted by s, the median of the row's first, middle and last
    values (sums of x - s and of its square); where s lies far from the mean, cancellation loses bits and the row must
    fall back to the two passes. Rows: an outlier first (1e4 standard deviations out: the median ignores it), outliers
    first and in the middle (the median is one: without the fallback this test fails there), a large common offset
    (mean 1e3, deviation 1), a constant row (variance exactly 0), and a plain one. The fp32 mean and rstd the forward
    saves must match fp64 statistics of the same bf16 values to 1e-5 relative."""
    torch.manual_seed(0)
    for cols in (40, 515, 1024):
        x = torch.randn(5, cols)
        x[0, 0] = 1e4
        x[4, 0] = x[4, cols // 2] = 1e4
        x[1] += 1e3
        x[2] = 3.0
        x = x.to(torch.bfloat16)
        w, b = torch.ones(cols, dtype=torch.bfloat16), torch.zeros(cols, dtype=torch.bfloat16)
        _, mean, rstd = torch.ops.gpt3d_C.layer_norm_fwd(x, w, b, 1e-5)
        x64 = x.double()
        mean64 = x64.mean(-1)
        rstd64 = 1 / torch.sqrt(((x64 - mean64[:, None]) ** 2).mean(-1) + 1e-5)
        torch.testing.assert_close(mean.double().flatten(), mean64, rtol=1e-5, atol=1e-6, msg=f"{isa} mean, {cols}")
        torch.testing.assert_close(rstd.double().flatten(), rstd64, rtol=1e-5, atol=0, msg=f"{isa} rstd, {cols}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmaxes_match_reference_on_every_path(isa, dtype):
    for sq, sk in ((1, 1), (9, 9), (7, 23), (33, 33), (5, 300)):
        scores = (torch.randn(2, 3, sq, sk) * 4).to(dtype).requires_grad_()
        mask = torch.rand(2, 1, sq, sk) < 0.3
        mask[0, 0, 0] = True  # one fully masked row: all zeros, no NaN
        cases = (("masked", kernels.scaled_masked_softmax(scores, mask, 0.3),
                  reference.scaled_masked_softmax(scores, mask, 0.3)),
                 ("causal", kernels.scaled_causal_softmax(scores, 0.7), reference.scaled_causal_softmax(scores, 0.7)))
        for kind, y, y_ref in cases:
            assert_close(y, y_ref, f"{isa} {kind} softmax y, {sq}x{sk}")
            assert not torch.isnan(y).any()
            dy = torch.randn_like(y)
            (dx,), (dx_ref,) = grads(y, scores, dy), grads(y_ref, scores, dy)
            assert_close(dx, dx_ref, f"{isa} {kind} softmax dscores, {sq}x{sk}")


@pytest.mark.parametrize("seq, block", [(1, 64), (70, 16), (129, 64), (48, 7)])
def test_native_block_attention_matches_float64_attention_on_every_path(isa, seq, block):
    """The C++ blocked attention (fp32; its softmax rows on this path, BLAS GEMMs) forward and backward."""
    from gpt3d.kernels.causal_attention import takes_native_kernel
    torch.manual_seed(seq + block)
    q, k, v, dout = (torch.randn(2, 3, seq, 16) for _ in range(4))
    assert takes_native_kernel(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = kernels.block_causal_attention(*leaves, 0.25, impl="fused", block=block)
    assert type(out.grad_fn).__name__ == "_NativeBlockCausalAttentionBackward"
    grads32 = torch.autograd.grad(out, leaves, dout)
    leaves64 = [t.double().requires_grad_() for t in (q, k, v)]
    out64 = torch.nn.functional.scaled_dot_product_attention(*leaves64, is_causal=True, scale=0.25)
    grads64 = torch.autograd.grad(out64, leaves64, dout.double())
    # fp32 GEMMs and softmax against float64: ~1e-7 relative per operation, sums of up to 129 terms of O(1)
    torch.testing.assert_close(out.double(), out64, atol=2e-5, rtol=2e-5)
    for name, g, g64 in zip("qkv", grads32, grads64):
        torch.testing.assert_close(g.double(), g64, atol=2e-5, rtol=2e-5, msg=lambda m: f"{isa} d{name}: {m}")


def test_softmax_exp_covers_the_whole_fp32_range(isa):
    """Scores from -inf through fp32's denormal range to the largest finite exponent: the vector exp of each path
    agrees with torch's exp (masked and underflowing keys give exactly 0)."""
    row = torch.tensor([[[[0.0, -1.0, -20.0, -87.0, -95.0, -103.0, -104.5, -200.0, float("-inf"), 3.0, -50.0, -0.5,
                         -88.5, -101.0, -60.0, -7.0, -33.0]]]])
    y, y_ref = kernels.scaled_masked_softmax(row, None, 1.0), reference.scaled_masked_softmax(row, None, 1.0)
    torch.testing.assert_close(y, y_ref, rtol=4e-6, atol=0)


def test_an_unknown_path_name_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("GPT3D_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="GPT3D_CPU_ISA=sse9 is unknown; use auto, avx512, avx2, portable or generic"):
        kernels.layer_norm(torch.randn(2, 8), None, None)


def test_auto_takes_the_widest_path_this_cpu_has(monkeypatch):
    monkeypatch.setenv("GPT3D_CPU_ISA", "auto")
    assert kernels.cpu_isa() == machine_isas()[0]


def test_auto_follows_the_table_of_the_process_path():
    """impl="auto" runs the fused op exactly where AUTO_FUSED_ON_CPU lists it for this process's path, else the
    reference: the result is bit-identical to the one it chose."""
    from gpt3d.kernels import _select
    isa = _select.process_cpu_isa()
    x, w, b = torch.randn(4, 40), torch.randn(40), torch.randn(40)
    for dtype in (torch.float32, torch.bfloat16):
        xd, wd, bd = x.to(dtype), w.to(dtype), b.to(dtype)
        chosen = "fused" if dtype in _select.AUTO_FUSED_ON_CPU[isa].get("layer_norm", ()) else "reference"
        assert torch.equal(kernels.layer_norm(xd, wd, bd, 1e-5, impl="auto"),
                           kernels.layer_norm(xd, wd, bd, 1e-5, impl=chosen)), (isa, dtype, chosen)
        s = torch.randn(1, 2, 8, 8, dtype=dtype)
        chosen = "fused" if dtype in _select.AUTO_FUSED_ON_CPU[isa].get("scaled_causal_softmax", ()) else "reference"
        assert torch.equal(kernels.scaled_causal_softmax(s, 0.5, impl="auto"),
                           kernels.scaled_causal_softmax(s, 0.5, impl=chosen)), (isa, dtype, chosen)
        chosen = "fused" if dtype in _select.AUTO_FUSED_ON_CPU[isa].get("gelu_tanh", ()) else "reference"
        assert torch.equal(kernels.gelu_tanh(xd, impl="auto"), kernels.gelu_tanh(xd, impl=chosen)), (isa, dtype, chosen)
        chosen = "fused" if dtype in _select.AUTO_FUSED_ON_CPU[isa].get("cross_entropy", ()) else "reference"
        assert torch.equal(kernels.logsumexp_rows(xd, 33, impl="auto"), kernels.logsumexp_rows(xd, 33, impl=chosen))
    assert _select.resolve("auto", "layer_norm", torch.zeros(1, dtype=torch.float64)) == "reference"
