"""Hugging Face GPT2LMHeadModel (SDPA attention) under torch DistributedDataParallel at DP2, fused AdamW, bf16 by
autocast; initial weights through gpt3d.interop.hf.state_dict_to_hf."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from . import common


def hf_model(job: dict):
    """GPT2LMHeadModel with gpt3d's initial weights."""
    from transformers import GPT2LMHeadModel

    from gpt3d.interop.hf import hf_config_from_model_config, state_dict_to_hf
    cfg = common.model_config(job)
    config = hf_config_from_model_config(cfg)
    config._attn_implementation = "sdpa"
    config.activation_function = "gelu_pytorch_tanh"  # gelu_new's function in one fused kernel: HF's fastest GELU
    model = GPT2LMHeadModel(config)
    model.load_state_dict(state_dict_to_hf(common.initial_state_dict(job), cfg), strict=True)
    return model


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def train(rank: int, job: dict):
    torch.distributed.init_process_group("gloo", rank=rank, world_size=job["world"])
    # DDP's defaults: gradient_as_bucket_view=True measured slower here (dp2 fp32, 7 alternating runs each: median
    # step 1.80 s against 1.72 s with the default), so the baseline keeps the faster setting.
    model = torch.nn.parallel.DistributedDataParallel(hf_model(job).train())
    optimizer = torch.optim.AdamW(model.parameters(), lr=job["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                                  fused=True)
    bf16 = job["dtype"] == "bf16"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step(i, tokens):
        tokens = common.dp_share(tokens, rank, job["world"])
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = lm_loss(model(input_ids=tokens[:, :-1]).logits, tokens[:, 1:])
        loss.backward()
        optimizer.step()
        return common.global_mean(loss)
    return common.timed_steps(step, job)
