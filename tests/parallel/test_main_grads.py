"""bf16 gradients accumulate in fp32 main grads: the post-accumulate-grad hook (autograd) and accumulate_weight_grad
with a bf16 GEMM (the WeightGradStore's sink) both add each micro-batch's bf16 gradient into the fp32 bucket, exactly
as summing torch.autograd.grad's bf16 gradients of an independent bf16 copy of the model in fp32."""
import copy

import torch

from gpt3d.parallel.data_parallel import GradSynchronizer
from gpt3d.train.runtime import init_runtime

from .harness import make_config, synthetic_batches


def test_bf16_micro_batch_gradients_accumulate_in_fp32():
    from gpt3d.model.gpt import build_gpt
    cfg = make_config(["train.dtype=bf16"])
    ctx = init_runtime(cfg, 0, 1, 0, 1).ctx
    model = build_gpt(cfg.model, cfg.train.seed)
    reference = copy.deepcopy(model).to(torch.bfloat16)
    sync = GradSynchronizer(ctx, [model], bucket_mb=0.05, overlap=True, distributed_optimizer=False,
                            dtype=torch.bfloat16)
    assert len(sync.all_buckets()) > 1
    tokens = torch.from_numpy(synthetic_batches(1, 4, cfg.train.seq_len, cfg.model.vocab_size)[0])
    expected = [torch.zeros_like(p, dtype=torch.float32) for p in reference.parameters()]
    for mb in range(2):
        batch = tokens[2 * mb:2 * mb + 2]
        model(batch[:, :-1], batch[:, 1:]).backward()
        grads = torch.autograd.grad(reference(batch[:, :-1], batch[:, 1:]), list(reference.parameters()))
        for e, g in zip(expected, grads):
            assert g.dtype == torch.bfloat16
            e += g.float()
    for p, e in zip(model.parameters(), expected):
        assert p.grad is None and p.main_grad.dtype == torch.float32
        assert torch.equal(p.main_grad, e)
    # A weight gradient from the store's bf16 GEMM (fp32=False) is added the same way: rounded to bf16, then fp32.
    weight = model.blocks["0"].mlp.fc1.weight
    inputs = torch.randn(2, 3, weight.shape[1]).to(torch.bfloat16)
    grad_output = torch.randn(2, 3, weight.shape[0]).to(torch.bfloat16)
    before = weight.main_grad.clone()
    sync.accumulate_weight_grad(weight, inputs, grad_output, fp32=False, deferred=False)
    expected_grad = grad_output.reshape(6, -1).t() @ inputs.reshape(6, -1)
    assert expected_grad.dtype == torch.bfloat16
    assert torch.equal(weight.main_grad, before + expected_grad.float())
