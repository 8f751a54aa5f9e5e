"""megatron-core's own GPTModel on this CPU machine, run in worker processes by test_megatron.py.

Run as `python -m tests.interop.megatron_peer JOB.json`: spawns `world` gloo ranks (tensor parallel), and for each
of the job's `steps` builds a fresh GPTModel (local layer spec, learned positions, erf or tanh GELU) and, per `mode`:
  save: random weights (seeded) -> legacy per-rank files and a torch_dist checkpoint written by megatron's own
        dist_checkpointing.save, plus the model's logits;
  load_legacy: strict-load the per-rank `model` dicts of a legacy checkpoint, write the logits;
  load_dist: load a torch_dist checkpoint with megatron's dist_checkpointing.load, write the logits.
The torch.cuda redirections megatron needs on a CPU-only torch live here, never in gpt3d.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F


def redirect_cuda_to_cpu() -> None:
    """What megatron-core's CPU path needs (shared/reference/peers-on-cpu.md)."""
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    from megatron.core.tensor_parallel import random as mrandom
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


def megatron_vocab(vocab: int, tp: int, multiple: int = 128) -> int:
    step = multiple * tp
    return -(-vocab // step) * step


def build_model(spec: dict, tp: int):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    act = F.gelu if spec["activation"] == "gelu" else (lambda x: F.gelu(x, approximate="tanh"))
    config = TransformerConfig(
        num_layers=spec["n_layers"], hidden_size=spec["d_model"], num_attention_heads=spec["n_heads"],
        ffn_hidden_size=spec["d_ff"], layernorm_epsilon=spec["eps"], activation_func=act,
        use_cpu_initialization=True, tensor_model_parallel_size=tp, hidden_dropout=0.0, attention_dropout=0.0,
        masked_softmax_fusion=False, bias_dropout_fusion=False, gradient_accumulation_fusion=False,
        bias_activation_fusion=False, apply_rope_fusion=False, init_method_std=0.02)
    return GPTModel(config, get_gpt_layer_local_spec(), vocab_size=megatron_vocab(spec["vocab"], tp),
                    max_sequence_length=spec["seq_len"], share_embeddings_and_output_weights=spec["tied"],
                    position_embedding_type="learned_absolute", parallel_output=False).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    s = ids.shape[1]
    positions = torch.arange(s).unsqueeze(0).expand_as(ids)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]  # True = masked (future)
    with torch.no_grad():
        return model(ids, positions, mask)


def megatron_args(spec: dict, tp: int, iteration: int) -> argparse.Namespace:
    """The subset of Megatron-LM's training args a checkpoint carries that describes the model."""
    return argparse.Namespace(
        num_layers=spec["n_layers"], hidden_size=spec["d_model"], num_attention_heads=spec["n_heads"],
        ffn_hidden_size=spec["d_ff"], kv_channels=spec["d_model"] // spec["n_heads"], seq_length=spec["seq_len"],
        max_position_embeddings=spec["seq_len"], padded_vocab_size=megatron_vocab(spec["vocab"], tp),
        vocab_size=spec["vocab"], make_vocab_size_divisible_by=128, tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=1, untie_embeddings_and_output_weights=not spec["tied"],
        position_embedding_type="learned_absolute", normalization="LayerNorm", layernorm_epsilon=spec["eps"],
        swiglu=False, add_bias_linear=True, group_query_attention=False, num_query_groups=None,
        openai_gelu=spec["activation"] == "gelu_tanh", bias_gelu_fusion=False, iteration=iteration,
        ckpt_format="torch")


def worker(rank: int, job: dict) -> None:
    tp = job["world"]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=tp)
    redirect_cuda_to_cpu()
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    model_parallel_cuda_manual_seed(job.get("seed", 0))
    torch.manual_seed(job.get("seed", 0))
    for step in job["steps"]:
        run_step(rank, tp, job["spec"], step)
    torch.distributed.destroy_process_group()


def run_step(rank: int, tp: int, spec: dict, step: dict) -> None:
    model = build_model(spec, tp)
    ids = torch.load(step["tokens"])
    mode = step["mode"]
    if mode == "save":
        randomize_biases_and_norms(model, rank)
        save_legacy(model, spec, tp, rank, step)
        save_dist(model, spec, tp, step)
    elif mode == "load_legacy":
        path = legacy_file(step["checkpoint"], step["iteration"], rank)
        model.load_state_dict(torch.load(path, weights_only=False)["model"], strict=True)
    elif mode == "load_dist":
        from megatron.core import dist_checkpointing
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, step["checkpoint_dir"])
        model.load_state_dict(state["model"], strict=True)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    out = logits(model, ids)
    if rank == 0:
        torch.save(out, step["logits"])
    torch.distributed.barrier()


def randomize_biases_and_norms(model, rank: int) -> None:
    """megatron inits biases to zero and norms to one: randomise them so every mapping is exercised."""
    gen = torch.Generator().manual_seed(100 + rank)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                noise = torch.randn(p.shape, generator=gen) * 0.1
                if not getattr(p, "tensor_model_parallel", False):
                    torch.distributed.broadcast(noise, 0)  # replicated on every TP rank
                p.add_(noise)


def legacy_file(root: str, iteration: int, rank: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}", f"mp_rank_{rank:02d}", "model_optim_rng.pt")


def save_legacy(model, spec: dict, tp: int, rank: int, step: dict) -> None:
    """As Megatron-LM's `--ckpt-format torch` save writes it (megatron/training/checkpointing.py)."""
    root, iteration = step["legacy_dir"], step["iteration"]
    path = legacy_file(root, iteration, rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"args": megatron_args(spec, tp, iteration), "checkpoint_version": 3.0, "iteration": iteration,
                "model": model.state_dict_for_save_checkpoint()}, path)
    if rank == 0:
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as fh:
            fh.write(str(iteration))


def save_dist(model, spec: dict, tp: int, step: dict) -> None:
    """megatron's own dist_checkpointing.save, with the common entries Megatron-LM adds."""
    from megatron.core import dist_checkpointing
    root, iteration = step["dist_dir"], step["iteration"]
    directory = os.path.join(root, f"iter_{iteration:07d}")
    os.makedirs(directory, exist_ok=True)
    state = {"args": megatron_args(spec, tp, iteration), "checkpoint_version": 3.0, "iteration": iteration,
             "model": model.sharded_state_dict()}
    dist_checkpointing.save(state, directory)
    if torch.distributed.get_rank() == 0:
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as fh:
            fh.write(str(iteration))


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        job_spec = json.load(fh)
    torch.multiprocessing.spawn(worker, args=(job_spec,), nprocs=job_spec["world"], join=True)
