"""Checkpoint I/O benchmark.

1. Save and load throughput of the checkpoint writer/reader (safetensors + SHA-256 + metadata) versus a plain write
   and read of the same bytes, from the same arrays and into the same fresh-per-tensor buffers, with the page cache
   dropped (cold) or warmed (warm) identically for both sides; measured in the same run.
2. `gpt3d convert` of a synthetic checkpoint (model + Adam moments, >= 2 GB) from tp2 x pp2 to tp1 x pp4: wall time,
   throughput, and the peak RSS of the convert process, which must stay under 25% of the checkpoint size. The
   synthetic checkpoint is itself written streaming, one tensor region at a time, with the same writer.

    python benchmarks/checkpoint.py [--dir /tmp] [--save-mb 512] [--layers 16 --d-model 1024]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpt3d.checkpoint.convert import write_gpt3d  # noqa: E402
from gpt3d.checkpoint.format import Checkpoint, RankFileWriter, merge_tensors, write_metadata  # noqa: E402
from gpt3d.checkpoint.plan import TargetLayout, model_shapes  # noqa: E402
from gpt3d.config.run import build_config  # noqa: E402

GB = 1024 ** 3


def drop_page_cache(path: Path) -> None:
    """Best effort: evict the files from the page cache so reads hit the disk (posix_fadvise DONTNEED)."""
    for p in ([path] if path.is_file() else list(path.rglob("*"))):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def plain_write(path: Path, tensors) -> None:
    """The baseline save: the same in-memory arrays written to one file, then fsync (no hashing, no header)."""
    with open(path, "wb") as f:
        for t in tensors:
            f.write(memoryview(t).cast("B"))
        f.flush()
        os.fsync(f.fileno())


def plain_read(path: Path, tensors) -> None:
    """The baseline load: the same bytes read into a fresh array per tensor, as Checkpoint.read allocates."""
    with open(path, "rb") as f:
        for t in tensors:
            out = np.empty_like(t)
            f.readinto(memoryview(out).cast("B"))


def gpt3d_save(ckpt: Path, tensors) -> None:
    w = RankFileWriter(ckpt, "tp00-pp00-dp00.safetensors")
    for i, t in enumerate(tensors):
        w.add(f"model/t{i}", "F32", t.shape, (0,), t.shape, t)
    files, meta_tensors = w.write()
    write_metadata(ckpt, {"step": 0, "layout": {}, "config": {}, "trainer": {}, "files": files,
                          "tensors": meta_tensors})


def gpt3d_load(ckpt: Path, n: int) -> None:
    c = Checkpoint(ckpt)
    c.verify()  # sha256 of every file: a whole extra read of the bytes
    for i in range(n):
        c.read(f"model/t{i}")
    c.close()


def best_of(fn, before, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def save_load_vs_copy(work: Path, total_mb: int, repeats: int = 3) -> None:
    """gpt3d save/load versus a plain write/read of the same bytes from/into the same kind of buffers. Loads are timed
    twice, both sides alike: page cache dropped before every read (posix_fadvise DONTNEED after fsync: "cold") and
    after a full warming read ("warm"). Each figure is the best of `repeats`, sides alternating."""
    rng = np.random.default_rng(0)
    tensors = [rng.standard_normal(n, dtype=np.float32) for n in [total_mb * 1024 * 1024 // 4 // 16] * 16]
    g = sum(t.nbytes for t in tensors) / GB
    ckpt, plain = work / "save", work / "plain.bin"

    def fresh_ckpt():
        shutil.rmtree(ckpt, ignore_errors=True)
        ckpt.mkdir()

    save_s = best_of(lambda: gpt3d_save(ckpt, tensors), fresh_ckpt, repeats)
    write_s = best_of(lambda: plain_write(plain, tensors), lambda: plain.unlink(missing_ok=True), repeats)
    print(f"save {g:.2f} GB (write + sha256 + fsync + metadata): {g / save_s:.2f} GB/s | plain write + fsync of the "
          f"same arrays: {g / write_s:.2f} GB/s | gpt3d / plain {write_s / save_s:.2f}x")
    n = len(tensors)
    for state, before_ckpt, before_plain in (
            ("cold (page cache dropped)", lambda: drop_page_cache(ckpt), lambda: drop_page_cache(plain)),
            ("warm (file read once before)", lambda: gpt3d_load(ckpt, n), lambda: plain_read(plain, tensors))):
        load_s = best_of(lambda: gpt3d_load(ckpt, n), before_ckpt, repeats)
        read_s = best_of(lambda: plain_read(plain, tensors), before_plain, repeats)
        print(f"load {g:.2f} GB, {state} (sha256 verify + read every tensor = the bytes read twice): "
              f"{g / load_s:.2f} GB/s | plain read into fresh arrays: {g / read_s:.2f} GB/s | gpt3d / plain "
              f"{read_s / load_s:.2f}x")


class SyntheticSource:
    """Deterministic full tensors produced region by region (value = f(name, global index)): never a whole model."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = shapes
        self.tensors = {n: {"shape": list(s), "dtype": "F32"} for n, s in shapes.items()}

    def has(self, name):
        return name in self.shapes

    def shape(self, name):
        return self.shapes[name]

    def read_region(self, name, start, size):
        shape = self.shapes[name]
        seed = np.float32(sum(name.encode()) % 997)
        cols = np.arange(start[-1], start[-1] + size[-1], dtype=np.float32) * np.float32(1e-6)
        if len(shape) == 1:
            return cols + seed
        rows = np.arange(start[0], start[0] + size[0], dtype=np.float32) * np.float32(1e-3) + seed
        return np.add.outer(rows, cols)

    def read(self, name):
        return self.read_region(name, (0,) * len(self.shapes[name]), self.shapes[name])


class Quiet:
    def stage(self, description, total):
        return lambda n: None

    def close(self):
        pass


def convert_benchmark(work: Path, layers: int, d_model: int) -> None:
    cfg = build_config({"model": {"n_layers": layers, "d_model": d_model, "n_heads": 16, "seq_len": 1024,
                                  "vocab_size": 50257}, "train": {"global_batch_size": 8, "micro_batch_size": 1}})
    shapes = {}
    for name, shape in model_shapes(cfg.model).items():
        for prefix in ("model/", "optim/exp_avg/", "optim/exp_avg_sq/"):
            shapes[prefix + name] = shape
    params = cfg.model.num_parameters(padded_vocab=True)
    src = work / "synthetic-tp2pp2"
    src.mkdir()
    meta = {"step": 100, "config": cfg.to_dict(),
            "layout": {"tp": 2, "pp": 2, "dp": 1, "vp": 1, "distributed_optimizer": False, "pipeline_split": None},
            "trainer": {"optimizer": {"type": "adamw", "step_count": 100}, "lr_scheduler": {"step": 100},
                        "loss_scaler": {"enabled": False, "scale": 1.0, "good_steps": 0},
                        "data": {"step": 100, "consumed_samples": 800, "global_batch_size": 8, "seed": 1234}}}
    meta["config"]["parallel"].update(tp=2, pp=2)
    start = time.perf_counter()
    rss_before = psutil.Process().memory_info().rss
    write_gpt3d(SyntheticSource(shapes), cfg.model, TargetLayout(2, 2, 1, 1), src, meta, Quiet())
    create_s = time.perf_counter() - start
    size = sum(p.stat().st_size for p in src.iterdir())
    print(f"synthetic checkpoint: {params / 1e6:.0f}M parameters + Adam moments = {size / GB:.2f} GB in tp2 x pp2, "
          f"written streaming in {create_s:.1f}s ({size / GB / create_s:.2f} GB/s; benchmark RSS grew "
          f"{(psutil.Process().memory_info().rss - rss_before) / 2**20:.0f} MB)")

    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(work / "plain-copy")], check=True)
    subprocess.run(["sync"], check=True)
    copy_s = time.perf_counter() - start
    shutil.rmtree(work / "plain-copy")

    dst = work / "converted-tp1pp4"
    drop_page_cache(src)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gpt3d", "convert", str(src), str(dst), "--tp", "1", "--pp", "4",
                             "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"convert failed: {err[-3000:]}")
    import resource
    ru_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # max over waited children (cp, convert)
    ckpt = Checkpoint(dst)
    synthetic = SyntheticSource(shapes)
    for name in ("model/embed.tok.weight", "optim/exp_avg_sq/blocks.3.mlp.fc2.weight"):
        assert np.array_equal(ckpt.read(name), synthetic.read(name)), name
    ckpt.close()
    limit = 0.25 * size
    print(f"gpt3d convert tp2 x pp2 -> tp1 x pp4 (verify + re-shard {size / GB:.2f} GB): {wall:.1f}s, "
          f"{size / GB / wall:.2f} GB/s | plain `cp -r` + sync of the same files: {copy_s:.1f}s | ratio "
          f"{copy_s / wall:.2f}")
    print(f"peak RSS of the convert process: {peak / 2**20:.0f} MB polled, {ru_peak / 2**20:.0f} MB ru_maxrss "
          f"(limit 25% of the checkpoint = {limit / 2**20:.0f} MB): "
          f"{'OK' if max(peak, ru_peak) < limit else 'OVER THE LIMIT'} "
          f"({max(peak, ru_peak) / size * 100:.1f}% of the checkpoint; largest tensor "
          f"{max(np.prod(s) for s in shapes.values()) * 4 / 2**20:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="scratch directory (needs ~3x the checkpoint)")
    parser.add_argument("--save-mb", type=int, default=512)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpt3d-ckpt-bench-", dir=args.dir))
    try:
        save_load_vs_copy(work, args.save_mb)
        convert_benchmark(work, args.layers, args.d_model)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
