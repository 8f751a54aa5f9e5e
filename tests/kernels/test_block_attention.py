"""gpt3d.kernels.block_causal_attention (explicit scores for the visible key blocks only) against torch's attention in
float64, forward and backward, at lengths that are, and are not, multiples of the block; what it saves for backward;
and model.dense_attention's choice of core."""
import pytest
import torch
import torch.nn.functional as F

from gpt3d import kernels
from gpt3d.config import ConfigError, ModelConfig
from gpt3d.cpuinfo import cpu_info
from gpt3d.model.ops import (AUTO_BLOCKED_MAX_SEQ, AUTO_BLOCKED_MAX_SEQ_FORWARD_ONLY, blocked_max_seq,
                             resolve_dense_core)
from gpt3d.planner.sparsity import blocked_score_fraction

# fp32 against the float64 reference: the GEMMs and the softmax round at ~1e-7 relative; outputs and gradients are
# O(1), so 2e-5 leaves room for sums of a few hundred terms. bf16 rounds scores, probabilities and outputs (2^-8).
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=4e-2, rtol=4e-2)}


def reference_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seq, block", [(1, 64), (5, 4), (64, 64), (100, 16), (129, 64), (200, 64), (48, 7)])
def test_matches_torch_attention_in_float64(impl, dtype, seq, block):
    torch.manual_seed(seq * 31 + block)
    q, k, v = (torch.randn(2, 3, seq, 16) for _ in range(3))
    dout = torch.randn(2, 3, seq, 16)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = kernels.block_causal_attention(*leaves, 16 ** -0.5, impl=impl, block=block)
    grads = torch.autograd.grad(out, leaves, dout.to(dtype))
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]  # bf16: the same rounded inputs
    out64 = reference_attention(*leaves64)
    grads64 = torch.autograd.grad(out64, leaves64, dout.to(dtype).double())
    assert out.dtype == dtype and out.shape == (2, 3, seq, 16)
    torch.testing.assert_close(out.double(), out64, **TOL[dtype])
    for name, g, g64 in zip("qkv", grads, grads64):
        torch.testing.assert_close(g.double(), g64, **TOL[dtype], msg=lambda m: f"d{name}: {m}")


def test_takes_strided_views_of_one_qkv_tensor():
    """The model passes q, k, v as permuted views of the QKV projection's output."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 70, 3 * 4 * 8, dtype=torch.float64, requires_grad=True)
    q, k, v = qkv.view(2, 70, 4, 3, 8).permute(3, 0, 2, 1, 4).unbind(0)
    out = kernels.block_causal_attention(q, k, v, 8 ** -0.5, block=16)
    dout = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, qkv, dout)
    (g_ref,) = torch.autograd.grad(reference_attention(q, k, v), qkv, dout)
    torch.testing.assert_close(out, reference_attention(q, k, v), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("seq, block", [(256, 64), (100, 16), (64, 64)])
def test_saves_only_the_visible_blocks(seq, block):
    """Besides q, k, v it keeps the probabilities of the visible blocks: the planner's blocked_score_fraction of the
    s x s square per head."""
    q, k, v = (torch.randn(1, 2, seq, 8, requires_grad=True) for _ in range(3))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kernels.block_causal_attention(q, k, v, 0.3, block=block)
    qkv_elements = 3 * q.numel()
    probs = sum(t.numel() for t in saved) - qkv_elements
    assert probs == round(blocked_score_fraction(seq, block) * 2 * seq * seq)


def test_fp32_on_the_cpu_runs_the_cpp_op_and_agrees_with_the_batched_gemm_blocks():
    """fused fp32 takes gpt3d_C::block_causal_attention_{fwd,bwd}; the same blocks as torch batched GEMMs (the path
    of bf16 and of a torch without BLAS) give the same numbers up to fp32 rounding, and so does the strided-view
    input the model passes."""
    from gpt3d.kernels.causal_attention import _BlockCausalAttention
    torch.manual_seed(0)
    qkv = torch.randn(2, 100, 3 * 4 * 16, requires_grad=True)
    q, k, v = qkv.view(2, 100, 4, 3, 16).permute(3, 0, 2, 1, 4).unbind(0)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = kernels.block_causal_attention(q, k, v, 0.25, block=32)
    assert type(out.grad_fn).__name__ == "_NativeBlockCausalAttentionBackward"
    # q, k, v are kept as the views they came as (no copies); the output is laid out as the projection reads it
    assert [t.untyped_storage().data_ptr() for t in saved[:3]] == [qkv.untyped_storage().data_ptr()] * 3
    assert out.transpose(1, 2).is_contiguous()
    batched = _BlockCausalAttention.apply(q, k, v, 0.25, 32, True)
    dout = torch.randn_like(out)
    (g,), (g_batched,) = torch.autograd.grad(out, qkv, dout), torch.autograd.grad(batched, qkv, dout)
    torch.testing.assert_close(out, batched, atol=2e-6, rtol=2e-6)  # the same products, summed in other orders
    torch.testing.assert_close(g, g_batched, atol=2e-5, rtol=2e-5)
    bf16 = kernels.block_causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.25, block=32)
    assert type(bf16.grad_fn).__name__ == "_BlockCausalAttentionBackward"


def test_the_cpp_op_refuses_bad_input_with_one_clear_error():
    q = torch.randn(1, 3, 10, 8)
    fwd, bwd = torch.ops.gpt3d_C.block_causal_attention_fwd, torch.ops.gpt3d_C.block_causal_attention_bwd
    with pytest.raises(RuntimeError, match=r"block_causal_attention_fwd: k has dtype BFloat16 but this kernel takes "
                                           r"float32; call gpt3d.kernels.block_causal_attention"):
        fwd(q, q.bfloat16(), q, 0.5, 4)
    with pytest.raises(RuntimeError, match=r"block_causal_attention_fwd: v has shape \[1, 3, 9, 8\] but q has shape "
                                           r"\[1, 3, 10, 8\]; they must match"):
        fwd(q, q, q[:, :, :9], 0.5, 4)
    with pytest.raises(RuntimeError, match=r"block_causal_attention_fwd: q must be \[batch, heads, seq, head_dim\], "
                                           r"got shape \[3, 10, 8\]"):
        fwd(q[0], q[0], q[0], 0.5, 4)
    with pytest.raises(RuntimeError, match="block_causal_attention_fwd: block must be at least 1, got 0"):
        fwd(q, q, q, 0.5, 0)
    _, probs = fwd(q, q, q, 0.5, 4)
    assert probs.shape == (3, 4 * 4 + 4 * 8 + 2 * 10)  # blocks [0,4), [4,8), [8,10): rows x visible keys
    with pytest.raises(RuntimeError, match=r"block_causal_attention_bwd: probs has shape \[3, 68\] and dtype Float "
                                           r"but must be the forward's float32 \[3, 75\] for seq 10 and block 5"):
        bwd(q, q, q, q, probs, 0.5, 5)


def test_bad_input_is_one_clear_error():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match=r"q, k and v must share one \[batch, heads, seq, head_dim\] shape, got "
                                         r"\(1, 2, 8, 4\), \(1, 2, 8, 4\) and \(1, 2, 7, 4\)"):
        kernels.block_causal_attention(q, q, torch.randn(1, 2, 7, 4), 0.5)
    with pytest.raises(ValueError, match="block must be at least 1, got 0"):
        kernels.block_causal_attention(q, q, q, 0.5, block=0)
    with pytest.raises(ValueError, match="impl must be 'auto', 'fused' or 'reference', got 'fast'"):
        kernels.block_causal_attention(q, q, q, 0.5, impl="fast")
    with pytest.raises(TypeError, match="q has dtype torch.int64 but must be floating point"):
        kernels.block_causal_attention(q.long(), q.long(), q.long(), 0.5)


def test_auto_takes_the_blocked_core_only_for_short_cpu_attention_in_fp32_or_fast_bf16():
    q = torch.zeros(1, 1, AUTO_BLOCKED_MAX_SEQ, 8, requires_grad=True)  # training: a gradient will be needed
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    assert resolve_dense_core("auto", q, 0.0, None) == "blocked"
    assert resolve_dense_core("auto", torch.zeros(1, 1, AUTO_BLOCKED_MAX_SEQ + 1, 8, requires_grad=True), 0.0,
                              None) == "sdpa"
    # forward only (evaluation): the blocked forward is faster only up to the shorter limit
    assert resolve_dense_core("auto", q.detach()[..., :AUTO_BLOCKED_MAX_SEQ_FORWARD_ONLY, :], 0.0, None) == "blocked"
    assert resolve_dense_core("auto", q.detach()[..., :AUTO_BLOCKED_MAX_SEQ_FORWARD_ONLY + 1, :], 0.0, None) == "sdpa"
    # bf16: by this CPU's limits (blocked_max_seq, checked for each kind of CPU below), up to them and not beyond
    info = cpu_info()
    for needs_grad in (False, True):
        limit = blocked_max_seq(torch.bfloat16, needs_grad, info.flags, info.vendor)
        for seq in (64, limit, limit + 1):
            if seq == 0:
                continue
            x = torch.zeros(1, 1, seq, 8, dtype=torch.bfloat16, requires_grad=needs_grad)
            assert resolve_dense_core("auto", x, 0.0, None) == ("blocked" if seq <= limit else "sdpa"), (seq, limit)
    assert resolve_dense_core("auto", q.half(), 0.0, None) == "sdpa"
    assert resolve_dense_core("auto", q, 0.1, None) == "sdpa"
    assert resolve_dense_core("auto", q[..., :4, :], 0.0, mask) == "sdpa"
    assert resolve_dense_core("auto", q, 0.0, None, impl="reference") == "sdpa"  # torch's softmax per block: slower
    for core in ("sdpa", "softmax", "blocked"):
        assert resolve_dense_core(core, q.bfloat16(), 0.1, mask) == core


@pytest.mark.parametrize("machine, flags, vendor, training, forward_only", [
    # AMX: torch's fused attention runs bf16 on AMX too; the blocked forward alone was 0.30-0.66x of it
    ("Intel Xeon with AMX", {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "GenuineIntel", 512, 0),
    # AVX512-BF16 where MKL takes its non-Intel path: torch's bf16 GEMM is the fast one, blocked wins 1.6-3.0x
    ("AMD EPYC (Zen 5)", {"avx512f", "avx512_bf16"}, "AuthenticAMD", 1024, 1024),
    # torch's bf16 GEMM slower than the fp32 route: the blocks' bf16 bmm would be slow
    ("Intel Xeon, AVX512-BF16 without AMX", {"avx512f", "avx512_bf16"}, "GenuineIntel", 0, 0),
    ("AVX2 only", {"avx2", "fma"}, "AuthenticAMD", 0, 0)])
def test_auto_limits_of_the_blocked_core_follow_the_kind_of_cpu(machine, flags, vendor, training, forward_only):
    flags = frozenset(flags)
    assert blocked_max_seq(torch.bfloat16, True, flags, vendor) == training, machine
    assert blocked_max_seq(torch.bfloat16, False, flags, vendor) == forward_only, machine
    assert blocked_max_seq(torch.float32, True, flags, vendor) == AUTO_BLOCKED_MAX_SEQ == 1024, machine
    assert blocked_max_seq(torch.float32, False, flags, vendor) == AUTO_BLOCKED_MAX_SEQ_FORWARD_ONLY == 512, machine
    assert blocked_max_seq(torch.float16, True, flags, vendor) == 0, machine


def test_blocked_core_with_attention_dropout_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.dense_attention: blocked never materialises the whole probability "
                                          r"matrix that attention dropout \(model.attn_dropout=0.1\) masks; use "
                                          r"dense_attention=softmax or attn_dropout=0"):
        ModelConfig(n_layers=1, d_model=16, n_heads=2, dense_attention="blocked", attn_dropout=0.1)
