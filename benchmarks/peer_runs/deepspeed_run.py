"""DeepSpeed's own engines on the Hugging Face GPT-2 with gpt3d's initial weights: ZeRO-1 at DP2 (client fused AdamW,
bf16 through DeepSpeed's bf16 mode with fp32 master weights) and PipelineModule at PP2 (1F1B over 4 micro-batches)."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from . import common
from .hf_ddp_run import hf_model, lm_loss


def ds_config(job: dict, micro: int, stage: int) -> dict:
    return {"train_batch_size": job["global_batch"], "train_micro_batch_size_per_gpu": micro,
            "zero_optimization": {"stage": stage}, "bf16": {"enabled": job["dtype"] == "bf16"},
            "gradient_clipping": 0.0, "steps_per_print": 10 ** 9, "zero_allow_untested_optimizer": True,
            "wall_clock_breakdown": False}


def adamw(params, job: dict):
    return torch.optim.AdamW(params, lr=job["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True)


def train(rank: int, job: dict):
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/gpt3d/torch_extensions"))
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    return train_zero1(rank, job, deepspeed) if job["layout"] == "dp2" else train_pipeline(job, deepspeed)


def train_zero1(rank: int, job: dict, deepspeed):
    model = hf_model(job).train()
    micro = job["global_batch"] // job["world"]
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=adamw(model.parameters(), job),
                                           config=ds_config(job, micro, stage=1))

    def step(i, tokens):
        tokens = common.dp_share(tokens, rank, job["world"])
        loss = lm_loss(engine(input_ids=tokens[:, :-1]).logits, tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        return common.global_mean(loss)
    return common.timed_steps(step, job)


class EmbeddingPipe(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.wte, self.wpe = transformer.wte, transformer.wpe

    def forward(self, ids):
        return self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))


class BlockPipe(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, hidden):
        out = self.block(hidden)  # causal SDPA: no mask passed
        return out[0] if isinstance(out, tuple) else out


class HeadPipe(nn.Module):
    def __init__(self, transformer, lm_head):
        super().__init__()
        self.ln_f, self.lm_head = transformer.ln_f, lm_head

    def forward(self, hidden):
        return self.lm_head(self.ln_f(hidden))


def pipe_layers(model) -> list[nn.Module]:
    t = model.transformer
    return [EmbeddingPipe(t), *[BlockPipe(b) for b in t.h], HeadPipe(t, model.lm_head)]


def train_pipeline(job: dict, deepspeed):
    from deepspeed.pipe import PipelineModule
    model = hf_model(job)
    layers = pipe_layers(model)
    # "uniform" (equal layer counts) cuts as gpt3d's pp2 does: embedding + first half of the blocks | the rest + head.
    pipe = PipelineModule(layers=layers, num_stages=2, loss_fn=lm_loss, partition_method="uniform")
    del model, layers
    engine, _, _, _ = deepspeed.initialize(model=pipe, optimizer=adamw(pipe.parameters(), job),
                                           config=ds_config(job, job["micro_batch"], stage=0))

    def step(i, tokens):
        micro = job["micro_batch"]
        batches = iter([(tokens[m:m + micro, :-1], tokens[m:m + micro, 1:]) for m in range(0, len(tokens), micro)])
        return float(engine.train_batch(data_iter=batches))  # mean over micro-batches, broadcast to every stage
    return common.timed_steps(step, job)
