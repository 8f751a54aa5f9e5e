"""The step floor's counts against independent ones: the attention core's FLOPs against the products a causal
attention computes, counted from its mask; the loss's bytes against the logits tensor's own size; AdamW's bytes
against a count by hand of what it reads and writes; bad rates rejected by name."""
import pytest
import torch

from gpt3d.profiler.step_floor import StepFloor, adamw_bytes, causal_attention_gemm_flops, loss_bytes, step_floor


@pytest.mark.parametrize("layers,batch,seq,d_model", [(1, 1, 1, 8), (2, 3, 17, 64), (6, 4, 512, 512)])
def test_attention_flops_count_the_visible_products_of_a_causal_mask(layers, batch, seq, d_model):
    visible = int(torch.ones(seq, seq).tril().sum())  # pairs (query, key) a causal mask lets through
    per_gemm = 2 * d_model * visible  # one multiply-add per pair and feature, in each product over the pairs
    forward_products, backward_products = 2, 4  # q k^T, p v; dP, dV, dQ, dK
    expected = (forward_products + backward_products) * per_gemm * batch * layers
    assert causal_attention_gemm_flops(layers, batch, seq, d_model) == expected


def test_loss_bytes_are_three_passes_over_the_logits():
    logits = torch.empty(2048, 50304)  # 4 x 512 tokens, GPT-2's vocabulary padded to a multiple of 128, fp32
    assert loss_bytes(2048, 50304, logits.element_size()) == 3 * logits.nbytes
    assert loss_bytes(2048, 50304, 2) == 3 * logits.to(torch.bfloat16).nbytes


def test_adamw_bytes_per_parameter():
    # fp32: weight, gradient, exp_avg, exp_avg_sq read (4 x 4 B); weight, exp_avg, exp_avg_sq written (3 x 4 B)
    assert adamw_bytes(1000, low_precision_weights=False) == 1000 * (16 + 12)
    # bf16: the same over the fp32 master weights, plus the bf16 weights written back (2 B)
    assert adamw_bytes(1000, low_precision_weights=True) == 1000 * (16 + 12 + 2)


def test_floor_adds_its_parts_at_their_rates():
    floor = step_floor(linear_gemm_seconds=1.5, attention_flops=0.4e12, gemm_tflops=0.4, memory_bytes=2.8e9,
                       copy_gbs=28.0)
    assert floor == StepFloor(linear_gemms=1.5, attention_gemms=1.0, memory=0.1)
    assert floor.seconds == pytest.approx(2.6)


@pytest.mark.parametrize("name", ["gemm_tflops", "copy_gbs"])
def test_a_rate_that_is_not_positive_is_named(name):
    kwargs = dict(linear_gemm_seconds=1.0, attention_flops=1.0, gemm_tflops=1.0, memory_bytes=1.0, copy_gbs=1.0)
    kwargs[name] = 0.0
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        step_floor(**kwargs)

