"""megatron-core's own engine: GPTModel (local layer spec), its DistributedDataParallel, its optimizer (fp32 main
params for bf16) and its schedules (no pipelining at TP2, 1F1B at PP2), with gpt3d's initial weights through
gpt3d.interop.megatron_legacy.stage_model_dict. CPU redirections as in tests/interop/megatron_peer.py
(shared/reference/peers-on-cpu.md)."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import common

LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2)}  # (tp, pp)


class CudaToCpu(TorchFunctionMode):
    """megatron's schedules and optimizers create tensors with device="cuda": make every device= keyword the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def build(job: dict, tp: int, pp: int):
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.module import Float16Module

    from gpt3d.interop.megatron_legacy import stage_model_dict
    s, bf16 = job["spec"], job["dtype"] == "bf16"
    # PP2: the first stage may take more layers (its own num_layers_in_first_pipeline_stage) to balance the head.
    first = job.get("megatron_first_stage_layers") if pp > 1 else None
    uneven = {} if first is None else {"num_layers_in_first_pipeline_stage": first}
    config = TransformerConfig(
        num_layers=s["layers"], hidden_size=s["d_model"], num_attention_heads=s["heads"], ffn_hidden_size=4 * s["d_model"],
        layernorm_epsilon=1e-5, activation_func=lambda x: F.gelu(x, approximate="tanh"), use_cpu_initialization=True,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, pipeline_dtype=common.compute_dtype(job),
        bf16=bf16, params_dtype=torch.float32, hidden_dropout=0.0, attention_dropout=0.0, masked_softmax_fusion=False,
        bias_dropout_fusion=False, gradient_accumulation_fusion=False, bias_activation_fusion=False,
        apply_rope_fusion=False, init_method_std=0.02, **uneven)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    model = GPTModel(config, get_gpt_layer_local_spec(), vocab_size=s["vocab"], max_sequence_length=s["seq"],
                     pre_process=pp_rank == 0, post_process=pp_rank == pp - 1,
                     share_embeddings_and_output_weights=False, position_embedding_type="learned_absolute",
                     parallel_output=True)
    layers = None
    if first is not None:
        layers = list(range(first)) if pp_rank == 0 else list(range(first, s["layers"]))
    sd = stage_model_dict(common.initial_state_dict(job), common.model_config(job),
                          parallel_state.get_tensor_model_parallel_rank(), tp, pp_rank, pp, layers)
    model.load_state_dict(sd, strict=True)
    del sd
    return config, (Float16Module(config, model) if bf16 else model)


def train(rank: int, job: dict):
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    import tests.interop.megatron_peer as peer
    torch.distributed.init_process_group("gloo", rank=rank, world_size=job["world"])
    peer.redirect_cuda_to_cpu()
    tp, pp = LAYOUTS[job["layout"]]
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    model_parallel_cuda_manual_seed(0)
    config, model = build(job, tp, pp)
    model = DistributedDataParallel(config=config, module=model, ddp_config=DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False))
    bf16 = job["dtype"] == "bf16"
    with CudaToCpu():  # its optimizers also create tensors with device="cuda"
        optimizer = get_megatron_optimizer(OptimizerConfig(
            optimizer="adam", lr=job["lr"], min_lr=job["lr"], weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
            adam_eps=1e-8, bf16=bf16, params_dtype=torch.float32, clip_grad=0.0, use_distributed_optimizer=False),
            [model])
    forward_backward = get_forward_backward_func()
    seq, micro = job["spec"]["seq"], job["micro_batch"]
    causal = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)[None, None]
    positions = torch.arange(seq).unsqueeze(0).expand(micro, seq)

    def loss_func(output):
        return output.float().mean(), {"lm loss": output.float().mean().detach()}

    def forward_step(data_iterator, module):
        tokens = next(data_iterator)
        return module(tokens[:, :-1], positions, causal, labels=tokens[:, 1:]), loss_func

    def step(i, tokens):
        model.zero_grad_buffer()
        optimizer.zero_grad()
        micro_batches = iter([tokens[m:m + micro] for m in range(0, len(tokens), micro)])
        with CudaToCpu():
            out = forward_backward(forward_step_func=forward_step, data_iterator=micro_batches, model=[model],
                                   num_microbatches=len(tokens) // micro, seq_length=seq, micro_batch_size=micro,
                                   forward_only=False)
            optimizer.step()
        loss = torch.tensor(0.0)
        if parallel_state.is_pipeline_last_stage():
            loss = torch.stack([o["lm loss"] for o in out]).mean()
        torch.distributed.all_reduce(loss)
        return loss.item() / tp  # the tp ranks of the last stage each hold the same loss
    return common.timed_steps(step, job)


