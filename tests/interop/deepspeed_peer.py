"""DeepSpeed's own ZeRO engine training a tiny gpt3d model on 2 gloo ranks (CPU accelerator), run by
test_deepspeed.py as `python -m tests.interop.deepspeed_peer JOB.json` (the __main__ guard is needed: ranks are
spawned). For each ZeRO stage of the job: 3 AdamW steps, engine.save_checkpoint, then rank 0 writes the logits of the
engine's module on the test tokens."""
from __future__ import annotations

import json
import os
import sys

import torch


def model_config(spec: dict):
    from gpt3d.config.model import ModelConfig
    return ModelConfig(**spec, hidden_dropout=0.0, attn_dropout=0.0, kernels="reference")


def worker(rank: int, job: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(job["world"]), LOCAL_WORLD_SIZE=str(job["world"]))
    import deepspeed
    from gpt3d.model.gpt import build_gpt
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = model_config(job["spec"])
    ids = torch.load(job["tokens"])
    for stage in job["stages"]:
        model = build_gpt(cfg, seed=0)  # the same init on every rank
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ds_config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                     "zero_optimization": {"stage": stage}, "steps_per_print": 10_000,
                     "zero_allow_untested_optimizer": True}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        gen = torch.Generator().manual_seed(1000 + rank)  # every rank trains on its own batch
        for _ in range(3):
            batch = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len + 1), generator=gen)
            loss = engine(batch[:, :-1], batch[:, 1:])
            engine.backward(loss)
            engine.step()
        directory = os.path.join(job["out"], f"zero{stage}")
        engine.save_checkpoint(directory)
        engine.module.eval()
        if stage == 3:  # the parameters are partitioned: gather them to run the module
            params = list(engine.module.parameters())
            with deepspeed.zero.GatheredParameters(params):
                with torch.no_grad():
                    logits = engine.module(ids)
        else:
            with torch.no_grad():
                logits = engine.module(ids)
        if rank == 0:
            torch.save(logits, os.path.join(job["out"], f"zero{stage}_logits.pt"))
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/gpt3d/torch_extensions"))
    os.environ.setdefault("DS_BUILD_OPS", "0")
    with open(sys.argv[1]) as fh:
        job_spec = json.load(fh)
    torch.multiprocessing.spawn(worker, args=(job_spec,), nprocs=job_spec["world"], join=True)
