"""Save a live Trainer to a checkpoint and load one into it, in any layout (collective over the world).

What each rank writes (one file per rank, `tpTT-ppPP-dpDD.safetensors`):
  - model/<name>: its TP-local parameter regions in fp32 (DP rank 0 only; TP-replicated parameters by TP rank 0 only;
    tied head copies are skipped, they load from model/embed.tok.weight). Under bf16/fp16 these are the optimizer's
    fp32 master weights, written like the Adam moments below (sharded pieces with the distributed optimizer); loading
    restores the masters exactly and rounds them into the bf16/fp16 weights, so resume is bit-exact and a checkpoint
    loads in any train.dtype (old fp32 checkpoints included);
  - optim/exp_avg/<name>, optim/exp_avg_sq/<name>: Adam moments per PARAMETER, in the parameter's shape and sharded
    like it. Without the distributed optimizer DP rank 0 writes whole regions; with it every DP rank writes the
    slices of its flat bucket shard mapped back to parameter coordinates (a piece with `flat` = [lo, hi) of the
    TP-local region), so the shard boundaries that cut through parameters are recorded exactly;
  - rng/rankRRRRR/<stream>: this rank's torch RNG state and its tracker streams.
Scalars (step, optimizer step count, loss scaler, LR schedule position, data position) go to metadata.json.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from gpt3d.model.init import param_full_name

from .errors import CheckpointError
from .format import Checkpoint, RankFileWriter, merge_tensors, rank_file_name, write_metadata
from .plan import model_shapes
from .safetensors_io import dtype_of
from .store import CHECKPOINTS, commit, prepare_tmp, tmp_dir_for

KILL_HOOK = "GPT3D_TEST_KILL_DURING_SAVE"  # tests only: SIGKILL every rank after its files, before the commit


def to_numpy(t: torch.Tensor, copy: bool) -> np.ndarray:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    elif copy:
        t = t.clone()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def region_of(param: torch.Tensor) -> tuple[tuple, tuple, tuple]:
    """(full shape, start, size) of a local parameter."""
    shard = getattr(param, "shard", None)
    size = tuple(param.shape)
    full, start = list(size), [0] * len(size)
    if shard is not None:
        full[shard.dim] *= shard.world
        start[shard.dim] = shard.rank * size[shard.dim]
    return tuple(full), tuple(start), size


def _names(trainer) -> dict[int, str]:
    return {id(p): param_full_name(p, n) for chunk in trainer.chunks for n, p in chunk.named_parameters()}


def _shard_range(trainer, bucket) -> Optional[tuple[int, int]]:
    """The flat range of `bucket` whose optimizer state this rank holds (None: another DP rank writes it)."""
    sync, ctx = trainer.sync, trainer.ctx
    if sync.distributed:
        size = bucket.padded // sync.dp.size
        return sync.dp.rank * size, (sync.dp.rank + 1) * size
    return (0, bucket.padded) if ctx.dp_rank == 0 else None


def rank_writer(trainer, directory: Path, copy: bool) -> RankFileWriter:
    ctx = trainer.ctx
    writer = RankFileWriter(directory, rank_file_name(ctx.tp_rank, ctx.pp_rank, ctx.dp_rank))
    names = _names(trainer)

    def stored_elsewhere(p) -> bool:  # tied head copies load from the embedding; TP replicas are stored by TP rank 0
        return getattr(p, "tied_copy", False) or (getattr(p, "shard", None) is None and ctx.tp_rank != 0)

    masters = any(state.has_master for state in trainer.optimizer.states)
    if ctx.dp_rank == 0 and not masters:  # fp32: the parameters are the master weights
        for chunk in trainer.chunks:
            for local, p in chunk.named_parameters():
                if stored_elsewhere(p):
                    continue
                full, start, size = region_of(p)
                arr = to_numpy(p, copy)
                writer.add("model/" + param_full_name(p, local), dtype_of(arr), full, start, size, arr)
    for state in trainer.optimizer.states:
        bucket = state.bucket
        rng = _shard_range(trainer, bucket)
        if rng is None:
            continue
        s0, s1 = rng
        for p, off in zip(bucket.params, bucket.offsets):
            if stored_elsewhere(p):
                continue
            n = p.numel()
            a, b = max(off, s0), min(off + n, s1)
            if a >= b:
                continue
            full, start, size = region_of(p)
            buffers = [("optim/exp_avg/", state.exp_avg), ("optim/exp_avg_sq/", state.exp_avg_sq)]
            if state.has_master:
                buffers.insert(0, ("model/", state.master))
            for prefix, buf in buffers:
                arr = to_numpy(buf[a - s0:b - s0], copy)
                name = prefix + names[id(p)]
                if a == off and b == off + n:
                    writer.add(name, dtype_of(arr), full, start, size, arr.reshape(size))
                else:
                    writer.add(name, dtype_of(arr), full, start, size, arr, flat=(a - off, b - off))
    prefix = f"rng/rank{ctx.rank:05d}/"
    streams = {"torch": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        streams["cuda"] = torch.cuda.get_rng_state(ctx.device)
    streams.update(trainer.tracker.get_states())
    for stream, state in streams.items():
        arr = to_numpy(state, True)
        writer.add(prefix + stream, dtype_of(arr), arr.shape, (0,) * arr.ndim, arr.shape, arr)
    return writer


def trainer_metadata(trainer, step: int) -> dict:
    from gpt3d.parallel.optimizer import lr_at
    cfg, layout = trainer.cfg, trainer.ctx.layout
    G = cfg.train.global_batch_size
    return {
        "step": step,
        "layout": {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "vp": layout.vp,
                   "schedule": cfg.parallel.schedule,  # which rank holds which stage (ZB-V: a V)
                   "distributed_optimizer": bool(cfg.parallel.distributed_optimizer),
                   "pipeline_split": cfg.parallel.pipeline_split},
        "config": cfg.to_dict(),
        "trainer": {
            "optimizer": {"type": "adamw", "step_count": trainer.optimizer.step_count,
                          "moments": ["exp_avg", "exp_avg_sq"]},
            "precision": {"dtype": cfg.train.dtype, "model_tensors": "fp32 master weights"},
            "lr_scheduler": {"step": step, "next_lr": lr_at(step, cfg.optim, cfg.train.steps)},
            "loss_scaler": {"enabled": trainer.scaler.enabled, "scale": trainer.scaler.scale,
                            "good_steps": trainer.scaler.good_steps},
            "data": {"step": step, "consumed_samples": step * G, "global_batch_size": G, "seed": cfg.train.seed},
        },
    }


def _barrier(ctx) -> None:
    if ctx.world_group.size > 1:
        dist.barrier(group=ctx.world_group.pg)


class CheckpointSaver:
    """Collective saves of one trainer into RUN/checkpoints. With async_save the rank files are written by a
    background thread from host copies; the commit (gather metadata, rename, move `latest`) happens at the next save
    or at `finish()`, so a checkpoint is complete only after that."""

    def __init__(self, trainer, run_dir: Path):
        self.trainer, self.ctx = trainer, trainer.ctx
        self.cfg = trainer.cfg.checkpoint
        self.root = Path(run_dir) / CHECKPOINTS
        self.last_step: Optional[int] = None
        self._pending: Optional[tuple[int, Path, threading.Thread, dict]] = None

    def due(self, step: int) -> bool:
        return self.cfg.save_interval > 0 and step % self.cfg.save_interval == 0

    def save(self, step: int) -> None:
        if self.last_step == step:
            return
        self.finish()
        if self.ctx.rank == 0:
            prepare_tmp(self.root, step)
        _barrier(self.ctx)
        tmp = tmp_dir_for(self.root, step)
        writer = rank_writer(self.trainer, tmp, copy=self.cfg.async_save)
        meta = trainer_metadata(self.trainer, step)
        self.last_step = step
        if self.cfg.async_save:
            result: dict = {}

            def work():
                try:
                    result["out"] = writer.write()
                except BaseException as exc:  # noqa: BLE001 - re-raised on the training thread at commit
                    result["error"] = exc
            thread = threading.Thread(target=work, name=f"gpt3d-save-{step}", daemon=True)
            thread.start()
            self._pending = (step, tmp, thread, result, meta)
            return
        self._commit(step, tmp, writer.write(), meta)

    def finish(self) -> None:
        """Complete an asynchronous save in flight (collective)."""
        if self._pending is None:
            return
        step, tmp, thread, result, meta = self._pending
        self._pending = None
        thread.join()
        if "error" in result:
            raise result["error"]
        self._commit(step, tmp, result["out"], meta)

    def _commit(self, step: int, tmp: Path, written: tuple[dict, dict], meta: dict) -> None:
        if os.environ.get(KILL_HOOK) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        ctx = self.ctx
        everyone = [None] * ctx.world_group.size
        if ctx.world_group.size > 1:
            dist.all_gather_object(everyone, written, group=ctx.world_group.pg)
        else:
            everyone = [written]
        if ctx.rank == 0:
            files, tensors = {}, {}
            for rank, (f, t) in enumerate(everyone):
                for name, info in f.items():
                    tp, dp, pp = ctx.layout.coords(rank)
                    files[name] = {**info, "rank": rank, "tp": tp, "pp": pp, "dp": dp}
                merge_tensors(tensors, t)
            write_metadata(tmp, {**meta, "files": files, "tensors": tensors})
            commit(tmp, self.root, step, self.cfg.keep_last)
        _barrier(ctx)


# -- loading -------------------------------------------------------------------------------------------------------
def check_compatible(ckpt: Checkpoint, cfg) -> None:
    """Raise one CheckpointError naming the checkpoint and every mismatch with the run's model and data."""
    expected = {f"model/{k}": v for k, v in model_shapes(cfg.model).items()}
    have = {n: ckpt.shape(n) for n in ckpt.names("model/")}
    problems = []
    ck_model = ckpt.config.get("model", {})
    if ck_model.get("vocab_size") != cfg.model.vocab_size:
        problems.append(f"vocabulary: checkpoint vocab_size={ck_model.get('vocab_size')}, run "
                        f"model.vocab_size={cfg.model.vocab_size}")
    missing = [n for n in expected if n not in have]
    extra = [n for n in have if n not in expected]
    wrong = [f"{n} {list(have[n])} vs model {list(expected[n])}" for n in expected
             if n in have and tuple(have[n]) != tuple(expected[n])]
    if missing:
        problems.append(f"missing tensors {missing[:4]}{'...' if len(missing) > 4 else ''}")
    if extra:
        problems.append(f"tensors the model does not have {extra[:4]}{'...' if len(extra) > 4 else ''}")
    if wrong:
        problems.append(f"shapes differ: {'; '.join(wrong[:4])}{'...' if len(wrong) > 4 else ''}")
    optimizer_steps = int(ckpt.trainer.get("optimizer", {}).get("step_count", 0) or 0)
    no_moments = [n for n in have if not (ckpt.has("optim/exp_avg/" + n[len("model/"):]) and
                                          ckpt.has("optim/exp_avg_sq/" + n[len("model/"):]))]
    if not problems and no_moments and optimizer_steps > 0 and not cfg.checkpoint.reset_optimizer:
        problems.append(f"no Adam moments for {no_moments[:2]}{'...' if len(no_moments) > 2 else ''} although the "
                        f"optimizer had taken {optimizer_steps} steps; pass --reset-optimizer to continue with fresh "
                        f"moments and a new step count")
    ck_G = ckpt.trainer.get("data", {}).get("global_batch_size")
    if not problems and ck_G is not None and ck_G != cfg.train.global_batch_size and ckpt.step > 0:
        problems.append(f"train.global_batch_size: checkpoint {ck_G}, run {cfg.train.global_batch_size} (the data "
                        f"position is a step of the global batch; keep the batch size when resuming)")
    if problems:
        raise CheckpointError(f"{ckpt.meta_path}: does not match this run's config: {'; '.join(problems)}. Resume "
                              f"with the config the checkpoint was written with (its metadata.json 'config'), or "
                              f"start a new run directory")


def read_tensor(ckpt: Checkpoint, name: str, start, size) -> torch.Tensor:
    """A region of a checkpoint tensor as a torch tensor of its stored dtype (bf16 is stored as raw 16-bit words)."""
    t = torch.from_numpy(ckpt.read_region(name, start, size))
    return t.view(torch.bfloat16) if ckpt.tensors[name]["dtype"] == "BF16" else t


def _fill_from_params(trainer, state, buf: torch.Tensor, region_of_param) -> None:
    """Fill `buf`, a per-element optimizer buffer of `state` (its bucket or this rank's shard of it), from each
    parameter's full TP-local region `region_of_param(p)`; padding stays zero."""
    bucket = state.bucket
    s0, s1 = (_shard_range(trainer, bucket) or (0, bucket.padded))
    buf.zero_()
    for p, off in zip(bucket.params, bucket.offsets):
        a, b = max(off, s0), min(off + p.numel(), s1)
        if a >= b:
            continue
        region = region_of_param(p).reshape(-1)
        buf[a - s0:b - s0].copy_(region[a - off:b - off])


def _same_layout(ckpt: Checkpoint, trainer) -> bool:
    """Same degrees and the same stage placement (ZB-V places stages in a V): each rank's RNG streams carry over."""
    L, l = ckpt.layout, trainer.ctx.layout
    schedule = L.get("schedule") or ckpt.config.get("parallel", {}).get("schedule", "1f1b")
    return (L["tp"], L["pp"], L["dp"], L["vp"], schedule) == (l.tp, l.pp, l.dp, l.vp, trainer.cfg.parallel.schedule)


@torch.no_grad()
def load_into_trainer(trainer, ckpt: Checkpoint) -> dict:
    """Load model, optimizer, scaler, step and (same layout only) RNG states. Returns a summary for the log."""
    ctx = trainer.ctx
    check_compatible(ckpt, trainer.cfg)
    names = _names(trainer)
    params = [(names[id(p)], p) for chunk in trainer.chunks for p in chunk.parameters()]
    has_optim = not trainer.cfg.checkpoint.reset_optimizer and all(
        ckpt.has(f"optim/exp_avg/{n}") and ckpt.has(f"optim/exp_avg_sq/{n}") for n, _ in params)
    # Verify every file this rank reads before changing anything.
    files = set()
    for name, p in params:
        _, start, size = region_of(p)
        prefixes = ["model/"] + (["optim/exp_avg/", "optim/exp_avg_sq/"] if has_optim else [])
        for prefix in prefixes:
            files |= ckpt.files_for(prefix + name, start, size)
    rng_prefix = f"rng/rank{ctx.rank:05d}/"
    restore_rng = _same_layout(ckpt, trainer) and ckpt.has(rng_prefix + "torch")
    if restore_rng:
        for n in ckpt.names(rng_prefix):
            files |= ckpt.files_for(n)
    ckpt.verify(sorted(files))

    masters = [state for state in trainer.optimizer.states if state.has_master]  # bf16/fp16 only
    weights = {}
    for name, p in params:
        _, start, size = region_of(p)
        value = read_tensor(ckpt, "model/" + name, start, size).float()
        p.data.copy_(value)  # bf16/fp16: the master rounded, as after every optimizer step
        if masters:
            weights[id(p)] = value
    for state in masters:
        _fill_from_params(trainer, state, state.master, lambda p: weights[id(p)])
    del weights
    if has_optim:
        for state in trainer.optimizer.states:
            for key, buf in (("exp_avg", state.exp_avg), ("exp_avg_sq", state.exp_avg_sq)):
                _fill_from_params(trainer, state, buf, lambda p, key=key: read_tensor(
                    ckpt, f"optim/{key}/{names[id(p)]}", *region_of(p)[1:]))
        trainer.optimizer.step_count = int(ckpt.trainer["optimizer"]["step_count"])
    scaler = ckpt.trainer.get("loss_scaler", {})
    if trainer.scaler.enabled and scaler.get("enabled"):
        trainer.scaler.scale = float(scaler["scale"])
        trainer.scaler.good_steps = int(scaler["good_steps"])
    if restore_rng:
        streams = {n[len(rng_prefix):]: torch.from_numpy(ckpt.read(n)) for n in ckpt.names(rng_prefix)}
        torch.set_rng_state(streams.pop("torch"))
        cuda = streams.pop("cuda", None)
        if cuda is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, ctx.device)
        trainer.tracker.set_states(streams)
    ckpt.close()
    trainer.step_index = ckpt.step
    return {"step": ckpt.step, "optimizer": has_optim, "rng": restore_rng}
