"""Memory model terms against hand-computed values (Korthikanti et al. 2022 formulas, Megatron bytes/parameter)."""
import pytest

from gpt3d.config import ModelConfig, load_config
from gpt3d.planner.activations import layer_activation_bytes, layer_saved_tensors
from gpt3d.planner.fit_advice import check_fits
from gpt3d.planner.memory import (NCCL_COMMUNICATOR_BYTES, LayoutError, estimate_memory, first_stage_parameters,
                                  layer_parameter_split)
from gpt3d.planner.schedule import bubble_fraction, first_stage_layer_activations

# small config with dropout on, so every term of 34sbh + 5as^2b exists
S, B, H, A = 128, 2, 64, 4


def small(**kw) -> ModelConfig:
    base = dict(n_layers=8, d_model=H, n_heads=A, seq_len=S, vocab_size=256, vocab_pad_multiple=64,
                hidden_dropout=0.1, attn_dropout=0.1)
    base.update(kw)
    return ModelConfig(**base)


def sbh() -> int:
    return S * B * H


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_activation_formulas(tp):
    m = small()
    scores = A * S * S * B
    no_sp = layer_activation_bytes(m, B, S, tp, False, "none")
    assert no_sp == pytest.approx(sbh() * (10 + 24 / tp) + 5 * scores / tp)
    sp = layer_activation_bytes(m, B, S, tp, True, "none") if tp > 1 else no_sp
    # gpt3d's qkv and fc1 save their all-gathered input (2 bytes x s b h each) where Megatron saves the shard
    gathered_inputs = 2 * 2 * sbh() * (1 - 1 / tp)
    assert sp == pytest.approx((34 * sbh() + 5 * scores) / tp + gathered_inputs)
    assert layer_activation_bytes(m, B, S, tp, tp > 1, "selective") == pytest.approx(34 * sbh() / tp
                                                                                      + gathered_inputs)
    assert layer_activation_bytes(m, B, S, tp, False, "selective") == pytest.approx(sbh() * (10 + 24 / tp))
    assert layer_activation_bytes(m, B, S, tp, tp > 1, "full") == pytest.approx(2 * sbh() / tp)
    assert layer_activation_bytes(m, B, S, tp, False, "full") == pytest.approx(2 * sbh())


def test_activation_without_dropout_and_fp32():
    m = small(hidden_dropout=0.0, attn_dropout=0.0)
    # 32 sbh (two 1-byte residual masks gone) + 2 a s^2 b (only the softmax output)
    assert layer_activation_bytes(m, B, S, 1, False, "none") == 32 * sbh() + 2 * A * S * S * B
    # fp32 activations: every 2-byte tensor doubles
    assert layer_activation_bytes(m, B, S, 1, False, "none", act_bytes=4) == 64 * sbh() + 4 * A * S * S * B
    names = [t.name for t in layer_saved_tensors(m, B, S, 1, False, "none")]
    assert "attention_dropout_mask" not in names and "softmax_output" in names


def test_sparse_density_scales_scores_only():
    m = small()
    full = layer_activation_bytes(m, B, S, 1, False, "none")
    half = layer_activation_bytes(m, B, S, 1, False, "none", attention_density=0.5)
    assert full - half == pytest.approx(0.5 * 5 * A * S * S * B)


def test_bytes_per_parameter():
    m = small()
    params = first_stage_parameters(m, tp=1, pp=1)
    kw = dict(vp=1, micro_batch=1, seq_len=S, num_microbatches=1, sequence_parallel=False, recompute="full")
    plain = estimate_memory(m, 1, 1, 4, distributed_optimizer=False, **kw)
    assert (plain.params, plain.grads, plain.optimizer) == pytest.approx((2 * params, 4 * params, 12 * params))
    zero1 = estimate_memory(m, 1, 1, 4, distributed_optimizer=True, **kw)
    assert zero1.params + zero1.grads + zero1.optimizer == pytest.approx((6 + 12 / 4) * params)
    fp32 = estimate_memory(m, 1, 1, 4, distributed_optimizer=True, dtype="fp32", **kw)
    assert fp32.params + fp32.grads + fp32.optimizer == pytest.approx((8 + 8 / 4) * params)
    assert plain.total == pytest.approx(plain.params + plain.grads + plain.optimizer + plain.activations
                                        + plain.comm_buffers)


def test_first_stage_parameters_hand_computed():
    m = small(vocab_size=256)  # padded 256
    sharded, replicated = layer_parameter_split(m)
    assert sharded + replicated == (m.num_parameters() - 256 * H - S * H - 2 * H) // m.n_layers
    # tp2 pp4: 2 layers, embeddings; the word embedding is vocab-parallel, positions replicated
    expected = 2 * (sharded / 2 + replicated) + 256 * H / 2 + S * H
    assert first_stage_parameters(m, 2, 4) == pytest.approx(expected)


def test_in_flight_and_total_activations():
    m = small()
    assert first_stage_layer_activations(8, pp=4, vp=1, num_microbatches=16) == 8  # p micro-batches x l/p
    assert first_stage_layer_activations(8, pp=4, vp=1, num_microbatches=2) == 4  # only 2 in flight
    assert first_stage_layer_activations(8, pp=4, vp=2, num_microbatches=16) == pytest.approx(8 * (1 + 3 / 8))
    assert first_stage_layer_activations(8, pp=4, vp=1, num_microbatches=16, schedule="gpipe") == 32
    mem = estimate_memory(m, tp=2, pp=4, dp=1, vp=1, micro_batch=B, seq_len=S, num_microbatches=16,
                          sequence_parallel=True, recompute="selective", distributed_optimizer=False)
    per_layer = 34 * sbh() / 2 + 2 * 2 * sbh() / 2  # + the all-gathered qkv and fc1 inputs gpt3d saves
    in_flight = 4  # micro-batches on the first of 4 stages, each holding 2 layers
    embedding_masks = in_flight * sbh() / 2  # 1-byte dropout mask per in-flight micro-batch
    stage_outputs = in_flight * 2 * sbh() / 2  # the sent output, held until its backward
    assert mem.activations == pytest.approx(8 * per_layer + embedding_masks + stage_outputs)
    p2p_receive = 2 * sbh() / 2  # the gradient coming back (bf16, sequence-sharded)
    assert mem.comm_buffers == pytest.approx(p2p_receive + 2 * NCCL_COMMUNICATOR_BYTES)


def test_bubble():
    assert bubble_fraction(1, 8) == 0
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)  # (p-1)/(m+p-1)
    assert bubble_fraction(4, 8, vp=3) == pytest.approx(1 / 9)  # ((p-1)/v) / (m + (p-1)/v)
    with pytest.raises(ValueError):
        bubble_fraction(4, 0)


def test_check_fits_returns_breakdown_and_explains_failures():
    run = load_config("gpt3-175b", ["parallel.tp=8", "parallel.pp=16", "parallel.sequence_parallel=true",
                                    "parallel.recompute=selective"])
    mem = check_fits(run, "a100-80gb", 1024)
    assert 0 < mem.total < 80 * 1024 ** 3
    with pytest.raises(LayoutError, match=r"tp8\*pp16 needs a multiple of 128 GPUs.*1000 is not \(use 896 or 1024"):
        check_fits(run, "a100-80gb", 1000)
    with pytest.raises(LayoutError, match="unknown GPU 'v100'; known GPUs: a100-80gb, a100-40gb, h100-80gb"):
        check_fits(run, "v100", 1024)
    too_big = load_config("gpt3-175b", ["parallel.tp=8", "parallel.pp=8", "train.micro_batch_size=4",
                                        "parallel.sequence_parallel=false", "parallel.recompute=none",
                                        "parallel.distributed_optimizer=false", "model.dense_attention=softmax"])
    with pytest.raises(LayoutError) as err:
        check_fits(too_big, "a100-80gb", 1024)
    text = str(err.value)
    assert "tp8 pp8 dp16 vp1 mb4 rc=none needs" in text and "but a100-80gb has 80 GiB" in text
    assert "activations 121.9" in text and "optimizer 31.5" in text
    assert "try recompute=full (67.4 GiB)" in text  # selective is not enough: full is the first that fits


def test_check_fits_batch_not_divisible():
    run = load_config("gpt3-175b", ["parallel.tp=8", "parallel.pp=16", "train.global_batch_size=1001"])
    with pytest.raises(LayoutError, match=r"global batch 1001 is not a multiple of micro_batch 1 \* dp8 = 8.*"
                                          r"multiple of 8 \(e.g. 1000 or 1008\)"):
        check_fits(run, "a100-80gb", 1024)
