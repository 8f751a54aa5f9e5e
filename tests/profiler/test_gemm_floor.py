"""gpt3d/profiler/gemm_floor.py: which profiled ops are a linear layer's GEMMs, and their time."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from gpt3d.profiler.gemm_floor import is_linear_gemm, linear_gemm_seconds

TOKENS, D_IN, D_OUT, HEAD = 96, 40, 24, 8


def _profiled_linear_and_attention():
    """A real nn.Linear forward + backward over TOKENS tokens, and an attention-shaped product beside it."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(D_IN, D_OUT)
    x = torch.randn(TOKENS, D_IN, requires_grad=True)
    q, k = torch.randn(TOKENS, HEAD), torch.randn(TOKENS, HEAD)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        layer(x).sum().backward()
        torch.mm(q, k.t())  # scores: [TOKENS, HEAD] @ [HEAD, TOKENS], per head: not a linear layer
    return prof


def test_the_linear_layers_three_gemms_are_counted_and_attention_is_not():
    prof = _profiled_linear_and_attention()
    events = prof.key_averages(group_by_input_shape=True)
    counted = sorted((e.key, [list(s) for s in e.input_shapes if s]) for e in events
                     if is_linear_gemm(e.key, e.input_shapes, TOKENS, {D_IN, D_OUT}))
    # What torch runs for nn.Linear: forward bias + x W^T, input gradient dy W, weight gradient dy^T x.
    assert counted == [("aten::addmm", [[D_OUT], [TOKENS, D_IN], [D_IN, D_OUT]]),
                       ("aten::mm", [[D_OUT, TOKENS], [TOKENS, D_IN]]),
                       ("aten::mm", [[TOKENS, D_OUT], [D_OUT, D_IN]])]
    scores = [e for e in events if e.key == "aten::mm" and [list(s) for s in e.input_shapes] == [[TOKENS, HEAD],
                                                                                               [HEAD, TOKENS]]]
    assert len(scores) == 1  # profiled, and left out
    gemm_us = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm")) - \
        scores[0].self_cpu_time_total
    assert linear_gemm_seconds(prof, TOKENS, {D_IN, D_OUT}) == pytest.approx(gemm_us / 1e6, rel=1e-9)


@pytest.mark.parametrize("name, shapes, expected", [
    ("aten::mm", [[96, 40], [40, 24]], True),
    ("aten::mm", [[96, 40], [40, 24], [96, 24]], True),  # mm(a, b, out=c)
    ("aten::addmm", [[24], [96, 40], [40, 24], [], []], True),
    ("aten::addmm_", [[24, 40], [24, 96], [96, 40], [], []], True),  # weight gradient accumulated in place
    ("aten::mm", [[96, 8], [8, 96]], False),  # attention scores: the head size is not a layer width
    ("aten::mm", [[40, 24], [24, 40]], False),  # no token dimension
    ("aten::bmm", [[2, 96, 40], [2, 40, 24]], False),  # batched: per-head attention, never a linear layer here
    ("aten::add", [[96, 40], [96, 40]], False),
    ("mkldnn::_linear_pointwise", [[4, 24, 40], [24, 40], [24], [], [], []], True),  # oneDNN x W^T, x [4, 24, 40]
    ("mkldnn::_linear_pointwise", [[4, 24, 40], [24, 32], [24], [], [], []], False),  # mismatched inner dims
])
def test_is_linear_gemm_reads_each_ops_operands(name, shapes, expected):
    assert is_linear_gemm(name, shapes, TOKENS, {D_IN, D_OUT}) is expected


def test_a_non_positive_token_count_is_refused():
    with pytest.raises(ValueError, match=r"tokens must be positive \(micro-batch x sequence\), got 0"):
        linear_gemm_seconds(_profiled_linear_and_attention(), 0, {D_IN})
