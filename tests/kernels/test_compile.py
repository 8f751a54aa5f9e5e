"""The fused ops are torch.library custom ops: valid registrations (opcheck), traced as single ops, and torch.compile
of a function using them runs and matches eager, forward and backward."""
import pytest
import torch

from gpt3d import kernels

from .conftest import assert_close


def block(x, r, w, b, scores, mask):
    total, h = kernels.add_layer_norm(x, r, w, b, 1e-5)
    y = kernels.layer_norm(h, w, b, 1e-5)
    p = kernels.scaled_masked_softmax(scores, mask, 0.5)
    c = kernels.scaled_causal_softmax(scores, 0.25)
    return total.square().mean() + y.sin().sum() + (p * scores).sum() + (c * c.detach().flip(-1)).sum()


def inputs(dtype=torch.float32):
    leaves = [torch.randn(4, 33, dtype=dtype), torch.randn(4, 33, dtype=dtype), 1 + torch.randn(33, dtype=dtype) / 4,
              torch.randn(33, dtype=dtype), torch.randn(2, 3, 7, 7, dtype=dtype)]
    return [t.requires_grad_() for t in leaves], torch.rand(2, 1, 7, 7) < 0.3


def test_torch_compile_matches_eager_forward_and_backward():
    leaves, mask = inputs()
    loss = block(*leaves, mask)
    grads = torch.autograd.grad(loss, leaves)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    c_loss = compiled(*leaves, mask)
    c_grads = torch.autograd.grad(c_loss, leaves)
    assert_close(c_loss, loss, "loss")
    for i, (g, want) in enumerate(zip(c_grads, grads)):
        assert_close(g, want, f"grad {i}")


def test_compiled_graph_calls_the_fused_ops():
    seen = set()

    def record(gm, example_inputs):
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    leaves, mask = inputs()
    torch._dynamo.reset()
    torch.compile(block, backend=record, fullgraph=True)(*leaves, mask)
    for op in ("layer_norm_fwd", "add_layer_norm_fwd", "scaled_masked_softmax_fwd", "scaled_causal_softmax_fwd"):
        assert any(f"gpt3d_C.{op}" in target for target in seen), (op, seen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_validates_schema_fake_and_autograd(dtype):
    x, r = torch.randn(3, 20, dtype=dtype, requires_grad=True), torch.randn(3, 20, dtype=dtype, requires_grad=True)
    w, b = torch.randn(20, dtype=dtype, requires_grad=True), torch.randn(20, dtype=dtype, requires_grad=True)
    scores = torch.randn(2, 2, 5, 6, dtype=dtype, requires_grad=True)
    mask = torch.rand(1, 2, 5, 6) < 0.3
    ops = torch.ops.gpt3d_C
    for op, args in [(ops.layer_norm_fwd.default, (x, w, b, 1e-5)),
                     (ops.add_layer_norm_fwd.default, (x, r, w, b, 1e-5)),
                     (ops.scaled_masked_softmax_fwd.default, (scores, mask, 0.5)),
                     (ops.scaled_masked_softmax_fwd.default, (scores, None, 0.5)),
                     (ops.scaled_causal_softmax_fwd.default, (scores, 0.5))]:
        torch.library.opcheck(op, args)


def test_opcheck_validates_the_blocked_attention_ops_schema_and_fake():
    """fp32 only (the ops' dtype); q, k, v as the model passes them: strided views of one QKV output. Their autograd
    is a torch.autograd.Function in Python (gpt3d/kernels/causal_attention.py), so no input requires grad here."""
    qkv = torch.randn(2, 9, 3 * 2 * 4)
    q, k, v = qkv.view(2, 9, 2, 3, 4).permute(3, 0, 2, 1, 4).unbind(0)
    ops = torch.ops.gpt3d_C
    _, probs = ops.block_causal_attention_fwd(q, k, v, 0.5, 4)
    dout = torch.randn(2, 2, 9, 4)
    for op, args in [(ops.block_causal_attention_fwd.default, (q, k, v, 0.5, 4)),
                     (ops.block_causal_attention_bwd.default, (dout, q, k, v, probs, 0.5, 4))]:
        torch.library.opcheck(op, args)
