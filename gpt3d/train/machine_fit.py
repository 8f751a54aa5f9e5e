"""Does a run fit this machine? Checked before any rank starts, from the planner's memory model.

On CPU every local rank shares the machine's RAM, so the check is (ranks on this machine) x (the planner's bytes for
the most loaded rank: parameters, gradients, optimizer state, activations; no NCCL buffers) plus the dataset's sample
indices (steps x global batch) against the memory available now. On a GPU it is one rank against the GPU's memory.
A run refused here would otherwise hang in allocation or be killed by the OOM killer minutes later.
"""
from __future__ import annotations

from gpt3d.config.base import ConfigError
from gpt3d.config.run import RunConfig

GiB = 1024 ** 3
INDEX_BYTES_PER_SAMPLE = 24  # the GPT dataset's sample index (2 x int64) and shuffle index (int64) per sample


def rank_bytes(cfg: RunConfig, layout, num_micro: int) -> float:
    """The planner's estimate for the most loaded rank of this layout, without communicator buffers."""
    from gpt3d.planner.memory import estimate_memory
    par, train = cfg.parallel, cfg.train
    memory = estimate_memory(cfg.model, layout.tp, layout.pp, layout.dp, layout.vp, train.micro_batch_size,
                             train.seq_len or cfg.model.seq_len, num_micro, par.sequence_parallel, par.recompute,
                             par.distributed_optimizer, train.dtype, par.schedule)
    return memory.total - memory.comm_buffers


def check_machine_fits(cfg: RunConfig, layout, num_micro: int, ranks_here: int) -> None:
    """Raise one ConfigError with the numbers when the run cannot fit this machine's memory."""
    import torch
    per_rank = rank_bytes(cfg, layout, num_micro)
    if cfg.train.device != "cpu" and torch.cuda.is_available():
        capacity = torch.cuda.get_device_properties(0).total_memory
        if per_rank > capacity:
            raise ConfigError(f"this run needs about {per_rank / GiB:.1f} GiB per GPU (planner estimate for "
                              f"{_label(layout)}) but the GPU has {capacity / GiB:.1f} GiB; use more tp/pp, "
                              f"parallel.recompute=full, a smaller micro-batch, or a smaller model")
        return
    import psutil
    available = psutil.virtual_memory().available
    samples = cfg.train.steps * cfg.train.global_batch_size
    index = samples * INDEX_BYTES_PER_SAMPLE
    need = ranks_here * per_rank + index
    if need > available:
        raise ConfigError(f"this run needs about {need / GiB:.1f} GiB of memory: {ranks_here} rank(s) x "
                          f"{per_rank / GiB:.1f} GiB (planner estimate for {_label(layout)}: parameters, gradients, "
                          f"optimizer state, activations) + {index / GiB:.1f} GiB of dataset indices "
                          f"({samples:,} samples = train.steps x train.global_batch_size), but this machine has "
                          f"{available / GiB:.1f} GiB available; shrink the model (model.n_layers, model.d_model), "
                          f"train.micro_batch_size, train.global_batch_size or train.steps")


def _label(layout) -> str:
    return f"tp={layout.tp} pp={layout.pp} dp={layout.dp} vp={layout.vp}"
