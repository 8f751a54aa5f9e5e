"""Analytical communication volume of one training step, per rank and group, derived from the config alone.

The counting convention is the one `Group.account` uses (gpt3d/parallel/comm.py): an all-reduce counts the tensor's
bytes once, an all-gather the gathered (full) tensor, a reduce-scatter the full input, a point-to-point exchange the
bytes this rank sends. Tests compare these numbers with the bytes counted during a real step; the benchmark prints
both. Notation: b micro-batch, s sequence, d hidden, V padded vocabulary, t/p/dp degrees, m micro-batches, 4 bytes
per fp32 element.

Per micro-batch on a tensor-parallel rank (t > 1), for each transformer layer it holds:
  forward  2 x b*s*d*4  (the outputs of attn.proj and mlp.fc2: all-reduce; with sequence parallelism a reduce-scatter,
                         plus an all-gather before attn.qkv and mlp.fc1 - that is 4 counted tensors, 2 of each)
  backward 2 x b*s*d*4  (the input gradients of attn.qkv and mlp.fc1; with SP the transposes of the forward)
  full recomputation replays the block forward in backward up to its last saved activation (torch's non-reentrant
  checkpoint stops early): the attn.proj reduction (and with SP the two all-gathers) again, not the mlp.fc2 one.
First stage: the vocabulary-parallel embedding sums its partial lookups (forward; with SP a reduce-scatter whose
backward is an all-gather). Last stage: the head's input (non-SP: all-reduce of its gradient in backward; SP:
all-gather forward, reduce-scatter backward) and the loss statistics ce_max (b*s*4) and ce_stats (2*b*s*4).
Once per step under SP: the gradients of the sequence-sharded parameters (LayerNorms, row-parallel biases,
position table) are all-reduced over TP.
Pipeline (p > 1): every (virtual) stage but the last sends one activation per micro-batch, every stage but the first
one gradient; both are b*(s/t with SP)*d*4 bytes.
Embedding group (p > 1): the first and last stages all-reduce their shard of the tied embedding's gradient, V/t*d*4.
Data parallel (dp > 1): every gradient bucket once (all-reduce), or with the distributed optimizer a reduce-scatter of
the gradients plus an all-gather of the parameters, each bucket padded to a multiple of dp.
"""
from __future__ import annotations

from dataclasses import dataclass

from gpt3d.config.run import RunConfig

from .context import Layout, stage_layer_ids
from .pipeline.schedules import placement_for

FP32 = 4


@dataclass(frozen=True)
class ParamSpec:
    name: str
    numel: int
    deferred: bool  # reduced after backward (tied embedding, or TP-partial under sequence parallelism)


def _virtual_stage(cfg: RunConfig, layout: Layout, pp_rank: int, chunk: int) -> int:
    return placement_for(cfg.parallel.schedule, layout.pp, layout.vp)[pp_rank][chunk]


def _chunk_layers(cfg: RunConfig, layout: Layout, pp_rank: int, chunk: int) -> list[int]:
    stages = stage_layer_ids(cfg.model.n_layers, layout.pp, layout.vp, cfg.parallel.pipeline_split)
    return stages[_virtual_stage(cfg, layout, pp_rank, chunk)]


def chunk_params(cfg: RunConfig, layout: Layout, pp_rank: int, chunk: int) -> list[ParamSpec]:
    """This rank's parameters of one model chunk, in module order, at their local (TP-sharded) sizes."""
    m, t = cfg.model, layout.tp
    d, a, f, V = m.d_model, m.attn_width, m.d_ff, m.padded_vocab_size
    sp = cfg.parallel.sequence_parallel and t > 1
    tied_sync = m.tie_embeddings and layout.pp > 1
    virtual = _virtual_stage(cfg, layout, pp_rank, chunk)
    first, last = virtual == 0, virtual == layout.pp * layout.vp - 1
    out: list[ParamSpec] = []
    if first:
        out += [ParamSpec("embed.tok.weight", V // t * d, tied_sync), ParamSpec("embed.pos.weight", m.seq_len * d, sp)]
    for i in _chunk_layers(cfg, layout, pp_rank, chunk):
        p = f"blocks.{i}."
        out += [ParamSpec(p + "ln1.weight", d, sp), ParamSpec(p + "ln1.bias", d, sp),
                ParamSpec(p + "attn.qkv.weight", 3 * a // t * d, False),
                ParamSpec(p + "attn.qkv.bias", 3 * a // t, False),
                ParamSpec(p + "attn.proj.weight", d * (a // t), False), ParamSpec(p + "attn.proj.bias", d, sp),
                ParamSpec(p + "ln2.weight", d, sp), ParamSpec(p + "ln2.bias", d, sp),
                ParamSpec(p + "mlp.fc1.weight", f // t * d, False), ParamSpec(p + "mlp.fc1.bias", f // t, False),
                ParamSpec(p + "mlp.fc2.weight", d * (f // t), False), ParamSpec(p + "mlp.fc2.bias", d, sp)]
    if last:
        out += [ParamSpec("final_ln.weight", d, sp), ParamSpec("final_ln.bias", d, sp)]
        if not m.tie_embeddings or not first:
            out.append(ParamSpec("head.weight", V // t * d, tied_sync))
    return out


def bucket_numels(cfg: RunConfig, layout: Layout, pp_rank: int, chunk: int) -> list[int]:
    """Sizes of the chunk's gradient buckets: regular parameters in reverse order, cut once a bucket reaches
    parallel.bucket_mb, then one bucket of the deferred ones (the greedy rule of GradSynchronizer)."""
    params = list(reversed(chunk_params(cfg, layout, pp_rank, chunk)))
    limit = max(1, int(cfg.parallel.bucket_mb * 1024 * 1024 / FP32))
    sizes, current = [], 0
    for spec in params:
        if spec.deferred:
            continue
        current += spec.numel
        if current >= limit:
            sizes.append(current)
            current = 0
    if current:
        sizes.append(current)
    deferred = sum(spec.numel for spec in params if spec.deferred)
    if deferred:
        sizes.append(deferred)
    return sizes


def _add(table: dict[str, dict[str, int]], group: str, op: str, nbytes: int) -> None:
    if nbytes:
        table.setdefault(group, {})
        table[group][op] = table[group].get(op, 0) + nbytes


def rank_volumes(cfg: RunConfig, layout: Layout, num_micro: int, pp_rank: int) -> dict[str, dict[str, int]]:
    """Bytes per group and operation that one rank at pipeline stage `pp_rank` counts in one training step
    (the same for every TP and DP rank of that stage)."""
    m, par = cfg.model, cfg.parallel
    t, p, dp, v = layout.tp, layout.pp, layout.dp, layout.vp
    b, s, d = cfg.train.micro_batch_size, cfg.train.seq_len, m.d_model
    sp = par.sequence_parallel and t > 1
    act = b * s * d * FP32  # one full [b, s, d] activation
    table: dict[str, dict[str, int]] = {}
    for c in range(v):
        layers = len(_chunk_layers(cfg, layout, pp_rank, c))
        placement = placement_for(par.schedule, p, v)
        virtual = placement[pp_rank][c]
        first, last = virtual == 0, virtual == p * v - 1
        if t > 1:
            per_mb: dict[str, int] = {}
            if sp:
                gathers = 2 * layers + 2 * layers  # qkv, fc1 forward; proj, fc2 backward
                scatters = 2 * layers + 2 * layers  # proj, fc2 forward; qkv, fc1 backward
                if par.recompute == "full":
                    gathers += 2 * layers  # qkv, fc1 replayed
                    scatters += layers  # proj replayed (fc2's output is not saved: recomputation stops before it)
                if first:
                    scatters += 1  # embedding forward
                    gathers += 1  # its backward
                if last:
                    gathers += 1  # head input forward
                    scatters += 1  # its backward
                per_mb = {"all_gather": gathers * act, "reduce_scatter": scatters * act}
            else:
                reduces = 2 * layers + 2 * layers
                if par.recompute == "full":
                    reduces += layers  # proj replayed, not fc2 (see above)
                reduces += int(first) + int(last)  # embedding forward; head input gradient
                per_mb = {"all_reduce": reduces * act}
            if last:
                per_mb["ce_max"] = b * s * FP32
                per_mb["ce_stats"] = 2 * b * s * FP32
            for op, nbytes in per_mb.items():
                _add(table, "tp", op, num_micro * nbytes)
            if sp:
                partial = sum(q.numel for q in chunk_params(cfg, layout, pp_rank, c)
                              if q.deferred and not q.name.endswith(("tok.weight", "head.weight")))
                _add(table, "tp", "all_reduce", partial * FP32)
        if p > 1:
            p2p = b * (s // t if sp else s) * d * FP32
            local = placement[pp_rank]  # a neighbour stage on this rank is handed over, not sent
            sends = int(virtual != p * v - 1 and virtual + 1 not in local) + int(virtual != 0 and virtual - 1 not in local)
            _add(table, "pp", "send", num_micro * sends * p2p)
            ends_apart = placement[0][0] == 0 and p * v - 1 not in placement[0]  # else the copies sum locally
            if m.tie_embeddings and (first or last) and ends_apart:
                _add(table, "embedding", "all_reduce", m.padded_vocab_size // t * d * FP32)
        if dp > 1:
            buckets = bucket_numels(cfg, layout, pp_rank, c)
            if par.distributed_optimizer:
                padded = sum(-(-n // dp) * dp for n in buckets) * FP32
                _add(table, "dp", "reduce_scatter", padded)
                _add(table, "dp", "all_gather", padded)
            else:
                _add(table, "dp", "all_reduce", sum(buckets) * FP32)
    return table


def group_totals(table: dict[str, dict[str, int]]) -> dict[str, int]:
    return {group: sum(ops.values()) for group, ops in table.items()}


def world_volumes(cfg: RunConfig, layout: Layout, num_micro: int) -> dict[str, int]:
    """Bytes per group summed over every rank of the world in one step."""
    total: dict[str, int] = {}
    for pp_rank in range(layout.pp):
        for group, nbytes in group_totals(rank_volumes(cfg, layout, num_micro, pp_rank)).items():
            total[group] = total.get(group, 0) + nbytes * layout.tp * layout.dp
    return total


def pipeline_bubble(pp: int, num_micro: int, vp: int = 1) -> float:
    """Idle fraction of a 1F1B pipeline with equal stages: (p - 1) / (m + p - 1) for vp = 1; interleaving divides the
    warm-up/cool-down by vp: (p - 1) / (vp * m + p - 1)."""
    return (pp - 1) / (vp * num_micro + pp - 1)
