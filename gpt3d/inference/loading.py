"""Build this rank's slice of a model for inference and fill it from a gpt3d checkpoint (any saved layout) or a Hugging
Face GPT-2 directory: the stage is built on the meta device, sharded for tensor parallelism, and every parameter
reads exactly its region of the full tensor (no random init, no full copy per rank from gpt3d checkpoints)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from gpt3d.config.model import ModelConfig
from gpt3d.model.gpt import GPTStage
from gpt3d.model.init import param_full_name
from gpt3d.model.linear import Linear
from gpt3d.parallel.context import LayoutError, ParallelContext

SOURCES = ("gpt3d", "hf")
Reader = Callable[[str, tuple, tuple], torch.Tensor]


def check_inference_layout(cfg: ModelConfig, tp: int, pp: int) -> None:
    """One clear error for a layout the model cannot be split into (before any rank starts)."""
    if tp < 1 or pp < 1:
        raise LayoutError(f"--tp {tp} --pp {pp}: degrees must be >= 1")
    if cfg.n_heads % tp:
        raise LayoutError(f"model has {cfg.n_heads} heads, not divisible by --tp {tp}; pick tp dividing the heads")
    if cfg.padded_vocab_size % tp or cfg.d_ff % tp:
        raise LayoutError(f"padded vocabulary {cfg.padded_vocab_size} / d_ff {cfg.d_ff} not divisible by --tp {tp}")
    if cfg.n_layers < pp:
        raise LayoutError(f"model has {cfg.n_layers} layers, fewer than --pp {pp} stages")


def stage_layers(n_layers: int, pp: int, pp_rank: int) -> list[int]:
    """Layers of pipeline stage `pp_rank`: as even as possible, earlier stages take the remainder."""
    base, extra = divmod(n_layers, pp)
    start = pp_rank * base + min(pp_rank, extra)
    return list(range(start, start + base + (pp_rank < extra)))


def _bf16_aware(array: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.view(torch.bfloat16) if dtype == "BF16" else t


def open_source(path: str | Path, source: str) -> tuple[ModelConfig, Reader, Callable[[list[str]], None]]:
    """(model config, read(name, start, size) -> tensor, verify(names)) of a checkpoint. Errors name the path."""
    if source not in SOURCES:
        raise ValueError(f"--from {source!r}: expected one of {list(SOURCES)}")
    if source == "hf":
        from gpt3d.interop.hf import load_hf_pretrained
        cfg, sd = load_hf_pretrained(str(path))

        def read_hf(name, start, size):
            return sd[name][tuple(slice(s, s + n) for s, n in zip(start, size))]
        return cfg, read_hf, lambda names: None
    from gpt3d.checkpoint import Checkpoint
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    ckpt = Checkpoint(resolve_checkpoint_path(path))
    cfg = ckpt.model_config()

    def read_gpt3d(name, start, size):
        full = "model/" + name
        return _bf16_aware(ckpt.read_region(full, start, size), ckpt.tensors[full]["dtype"])

    def verify(names):
        files = set()
        for n in names:
            files |= ckpt.files_for("model/" + n)
        ckpt.verify(sorted(files))
    return cfg, read_gpt3d, verify


def build_stage(cfg: ModelConfig, ctx: ParallelContext) -> GPTStage:
    """This rank's stage on the meta device, sharded for tensor parallelism (no sequence parallelism)."""
    from gpt3d.parallel.random import RNGTracker, StreamContext
    from gpt3d.parallel.tensor import apply_tensor_parallel
    L = ctx.layout
    with torch.device("meta"):
        stage = GPTStage(cfg, stage_layers(cfg.n_layers, L.pp, ctx.pp_rank), ctx.is_first_stage, ctx.is_last_stage)
    if L.tp > 1:
        apply_tensor_parallel(stage, ctx.tp_group, False, StreamContext(RNGTracker(ctx.device)))
    return stage


def _region(param: nn.Parameter) -> tuple[tuple, tuple]:
    shard = getattr(param, "shard", None)
    size = tuple(param.shape)
    start = [0] * len(size)
    if shard is not None:
        start[shard.dim] = shard.rank * size[shard.dim]
    return tuple(start), size


# Linear weights [out, in] are stored column-major (as Hugging Face's Conv1D): x @ W then runs without a transposed
# operand, about 2x faster on CPU in fp32 for a few rows (a decode step of a batch), same numbers. So is the output
# head (the token embedding when tied, [vocab, d]): the logits GEMM is the largest of a decode step.
_COLUMN_MAJOR = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight", "embed.tok.weight",
                 "head.weight")


@torch.no_grad()
def fill_stage(stage: GPTStage, read: Reader, dtype: torch.dtype, device: torch.device) -> GPTStage:
    for local_name, param in list(stage.named_parameters()):
        start, size = _region(param)
        value = read(param_full_name(param, local_name), start, size).to(device=device, dtype=dtype).contiguous()
        if local_name.endswith(_COLUMN_MAJOR) and dtype == torch.float32:  # bf16 GEMMs gain nothing from it
            value = value.t().contiguous().t()
        owner_name, _, attr = local_name.rpartition(".")
        owner = stage.get_submodule(owner_name) if owner_name else stage
        new = nn.Parameter(value, requires_grad=False)
        new.__dict__.update({k: v for k, v in param.__dict__.items() if not k.startswith("_")})
        setattr(owner, attr, new)
    if torch.device(device).type == "cpu" and (_onednn_bf16() if dtype == torch.bfloat16 else
                                               dtype == torch.float32 and torch.backends.mkldnn.is_available()):
        _prepack_linears(stage)
    return stage.eval()


def _onednn_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _prepack_linears(stage: GPTStage) -> None:
    """On CPU each block's plain linear layer also keeps its weight in oneDNN's blocked layout, which
    gpt3d/inference/forward.py multiplies by directly: bf16 always (1.32x at batch 1, 1.15x at batch 8 over the plain
    bf16 GEMMs, same numbers); fp32 for GEMMs of several rows, where oneDNN streams the weights from memory faster than
    MKL's GEMM on the column-major copy (9.6 against 7.1 GB/s at 8 rows, one thread; the single-row GEMM of a batch-1
    decode step stays faster on the column-major copy). The weights of an inference stage never change, so the copy
    cannot go stale; it costs a second copy of those weights. Tensor-parallel layers are left as they are (they
    communicate inside their forward)."""
    for module in stage.blocks.modules():
        if type(module) in (nn.Linear, Linear):
            module.packed_weight = torch.ops.mkldnn._reorder_linear_weight(module.weight, None)


def load_stage(path: str | Path, source: str, ctx: ParallelContext, dtype: torch.dtype) -> tuple[GPTStage, ModelConfig]:
    cfg, read, verify = open_source(path, source)
    check_inference_layout(cfg, ctx.layout.tp, ctx.layout.pp)
    stage = build_stage(cfg, ctx)
    verify([param_full_name(p, n) for n, p in stage.named_parameters()])
    return fill_stage(stage, read, dtype, ctx.device), cfg
