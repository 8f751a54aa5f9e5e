"""The on-disk checkpoint: safetensors files plus metadata.json describing every tensor independently of the layout.

    step_00000010/
      metadata.json                 format, step, layout, resolved config, trainer state, files (+ sha256), tensors
      tp00-pp00-dp00.safetensors    what rank (tp 0, pp 0, dp 0) holds
      ...

Every tensor ("model/<name>", "optim/exp_avg/<name>", "optim/exp_avg_sq/<name>", "rng/rank00003/<stream>") is
described by its FULL shape and a list of pieces; a piece is the stored tensor `key` of `file`, holding the
rectangular region `start`/`size` of the full tensor, or, when `flat` = [lo, hi) is given, the elements lo..hi-1 of
that region flattened row-major (a distributed-optimizer shard boundary cuts through the parameter). Any layout reads
any checkpoint by asking for the regions it needs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from .errors import CheckpointError
from .safetensors_io import STORAGE, SafetensorsReader, SafetensorsWriter, file_sha256, with_path

FORMAT = "gpt3d-checkpoint"
VERSION = 1
METADATA = "metadata.json"
META_SHA = "metadata_sha256"  # sha256 of the rest of metadata.json (canonical JSON), so no edit goes unnoticed


def metadata_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != META_SHA}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_plain_file_name(name) -> bool:
    """A file directly inside the checkpoint directory: no separator, not '.', '..' or empty."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def rank_file_name(tp: int, pp: int, dp: int) -> str:
    return f"tp{tp:02d}-pp{pp:02d}-dp{dp:02d}.safetensors"


def piece(file: str, key: str, start, size, flat: Optional[tuple[int, int]] = None) -> dict:
    return {"file": file, "key": key, "start": [int(s) for s in start], "size": [int(s) for s in size],
            "flat": None if flat is None else [int(flat[0]), int(flat[1])]}


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _intersect(a_start, a_size, b_start, b_size):
    lo = [max(a, b) for a, b in zip(a_start, b_start)]
    hi = [min(a + n, b + m) for a, n, b, m in zip(a_start, a_size, b_start, b_size)]
    if any(l >= h for l, h in zip(lo, hi)):
        return None
    return lo, hi


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """A complete checkpoint directory, read lazily. Opening checks the metadata and that every file is present with
    its recorded size; `verify()` checks the SHA-256s; `read_region()` assembles any region of any tensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / METADATA
        self.meta_path = meta_path
        if not meta_path.is_file():
            raise CheckpointError(f"{meta_path}: missing; {self.path} is not a complete gpt3d checkpoint (an "
                                  f"interrupted save leaves none); pass a checkpoint directory such as "
                                  f"RUN/checkpoints/step_00000100")
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{meta_path}: not valid JSON ({exc}): the checkpoint is corrupted; resume from "
                                  f"another checkpoint") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path}: not a gpt3d checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r}); "
                                  f"import foreign checkpoints with `gpt3d convert --from hf|megatron|deepspeed`")
        if meta.get("version") != VERSION:
            raise CheckpointError(f"{meta_path}: format version {meta.get('version')} is not supported by this gpt3d "
                                  f"(reads version {VERSION}); use the gpt3d release that wrote it")
        for key in ("step", "layout", "config", "files", "tensors", "trainer"):
            if key not in meta:
                raise CheckpointError(f"{meta_path}: has no '{key}' entry: corrupted; resume from another checkpoint")
        self.meta = meta
        self.tensors: dict[str, dict] = meta["tensors"]
        self.files: dict[str, dict] = meta["files"]
        self._readers: dict[str, SafetensorsReader] = {}
        self._verified: set[str] = set()
        try:
            self.check_files()
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{meta_path}: malformed entry ({type(exc).__name__}: {exc}): corrupted metadata; "
                                  f"resume from another checkpoint") from None

    # -- description ----------------------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def layout(self) -> dict:
        return self.meta["layout"]

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def trainer(self) -> dict:
        return self.meta["trainer"]

    def model_config(self):
        from gpt3d.config.base import from_dict
        from gpt3d.config.model import ModelConfig
        return from_dict(ModelConfig, self.config["model"], "model")

    def names(self, prefix: str) -> list[str]:
        return [n for n in self.tensors if n.startswith(prefix)]

    def has(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def nbytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files.values())

    # -- integrity ------------------------------------------------------------------------------------------------
    def check_files(self) -> None:
        if not isinstance(self.files, dict) or not isinstance(self.tensors, dict):
            raise CheckpointError(f"{self.meta_path}: 'files' and 'tensors' must be mappings: corrupted metadata")
        for name in self.files:
            if not is_plain_file_name(name):
                raise CheckpointError(f"{self.meta_path}: lists file {name!r}, which is not a plain file name inside "
                                      f"{self.path}; a checkpoint only reads its own files: the metadata is corrupted "
                                      f"or hostile")
        for name, info in self.files.items():
            path = self.path / name
            if not path.is_file():
                raise CheckpointError(f"{path}: missing (listed in {self.meta_path}); the checkpoint is incomplete; "
                                      f"resume from another checkpoint")
            size = path.stat().st_size
            if size != int(info["bytes"]):
                raise CheckpointError(f"{path}: {size} bytes, but {self.meta_path} records {info['bytes']}: "
                                      f"truncated or modified; resume from another checkpoint")
        self._pieces_by_file: dict[str, list[tuple[str, dict, dict]]] = {}
        for tname, t in self.tensors.items():
            for p in t["pieces"]:
                if p["file"] not in self.files:
                    raise CheckpointError(f"{self.meta_path}: tensor {tname} names file {p['file']!r}, which is not "
                                          f"listed: corrupted metadata")
                self._check_piece_region(tname, t, p)
                self._pieces_by_file.setdefault(p["file"], []).append((tname, t, p))

    def _check_piece_region(self, tname: str, t: dict, p: dict) -> None:
        shape, start, size, flat = t["shape"], p["start"], p["size"], p["flat"]
        ok = t["dtype"] in STORAGE and len(start) == len(size) == len(shape) and all(
            0 <= a and 0 < n and a + n <= s for a, n, s in zip(start, size, shape))
        if ok and flat is not None:
            ok = len(flat) == 2 and 0 <= flat[0] < flat[1] <= _numel(size)
        if not ok:
            raise CheckpointError(f"{self.meta_path}: tensor {tname} (dtype {t['dtype']}, shape {shape}) has a piece "
                                  f"start={start} size={size} flat={flat} outside it: corrupted metadata; resume from "
                                  f"another checkpoint")

    def check_pieces(self, file: str, reader: SafetensorsReader) -> None:
        """Every piece stored in `file` against its safetensors header: the key exists with the tensor's dtype and
        the piece's shape, so no read can reach another tensor's bytes."""
        for tname, t, p in self._pieces_by_file.get(file, ()):
            stored = reader.tensors.get(p["key"])
            want = [p["flat"][1] - p["flat"][0]] if p["flat"] is not None else list(p["size"])
            if stored is None or stored["dtype"] != t["dtype"] or list(stored["shape"]) != want:
                have = "no such key" if stored is None else f"{stored['dtype']} {list(stored['shape'])}"
                raise CheckpointError(f"{self.meta_path}: tensor {tname} expects key {p['key']!r} of {reader.path} "
                                      f"to be {t['dtype']} {want}, but its header has {have}: the metadata does not "
                                      f"match the file; resume from another checkpoint")

    def verify_metadata(self) -> None:
        recorded = self.meta.get(META_SHA)
        if recorded != metadata_digest(self.meta):
            what = "has no checksum" if recorded is None else "does not match its recorded sha256"
            raise CheckpointError(f"{self.meta_path}: {what} ({META_SHA}): the metadata was edited or corrupted; "
                                  f"resume from another checkpoint")

    def verify(self, files: Optional[Iterable[str]] = None, on_bytes: Optional[Callable[[int], None]] = None) -> None:
        """Check metadata.json's own checksum, then compare the SHA-256 of each file (default: all) with the
        metadata and its pieces with its header; each file is checked once."""
        self.verify_metadata()
        for name in (self.files if files is None else files):
            if name in self._verified:
                continue
            self._reader(name)  # header and pieces checked
            path = self.path / name
            digest = file_sha256(path)
            if digest != self.files[name]["sha256"]:
                raise CheckpointError(f"{path}: checksum mismatch (sha256 {digest[:16]}..., {self.meta_path} "
                                      f"records {self.files[name]['sha256'][:16]}...): the file is corrupted; "
                                      f"resume from another checkpoint")
            self._verified.add(name)
            if on_bytes is not None:
                on_bytes(int(self.files[name]["bytes"]))

    def files_for(self, name: str, start=None, size=None) -> set[str]:
        t = self._tensor(name)
        start = [0] * len(t["shape"]) if start is None else start
        size = t["shape"] if size is None else size
        return {p["file"] for p in t["pieces"] if _intersect(p["start"], p["size"], start, size) is not None}

    # -- reading --------------------------------------------------------------------------------------------------
    def _tensor(self, name: str) -> dict:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.meta_path}: has no tensor {name!r}; the checkpoint was written for another "
                                  f"model") from None

    def _reader(self, file: str) -> SafetensorsReader:
        if file not in self._readers:
            if file not in self.files:
                raise CheckpointError(f"{self.meta_path}: names file {file!r}, which is not listed: corrupted metadata")
            reader = SafetensorsReader(self.path / file)
            try:
                self.check_pieces(file, reader)
            except CheckpointError:
                reader.close()
                raise
            self._readers[file] = reader
        return self._readers[file]

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def read(self, name: str) -> np.ndarray:
        shape = self.shape(name)
        return self.read_region(name, [0] * len(shape), shape)

    def read_region(self, name: str, start, size) -> np.ndarray:
        """The region [start, start + size) of full tensor `name`, assembled from whichever pieces overlap it."""
        t = self._tensor(name)
        start, size = [int(s) for s in start], [int(s) for s in size]
        out = np.empty(size, STORAGE[t["dtype"]])
        covered = 0
        flat_groups: dict[tuple, list[dict]] = {}
        for p in t["pieces"]:
            inter = _intersect(p["start"], p["size"], start, size)
            if inter is None:
                continue
            if p["flat"] is not None:
                flat_groups.setdefault((tuple(p["start"]), tuple(p["size"])), []).append(p)
                continue
            lo, hi = inter
            rel_lo = [l - s for l, s in zip(lo, p["start"])]
            rel_hi = [h - s for h, s in zip(hi, p["start"])]
            target = out[tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))]
            if target.flags.c_contiguous and list(rel_lo[1:]) == [0] * len(rel_lo[1:]) and \
                    list(rel_hi[1:]) == list(p["size"][1:]):
                self._reader(p["file"]).read_rows(p["key"], rel_lo[0], rel_hi[0], out=target)  # no copy
                covered += target.size
                continue
            block = self._reader(p["file"]).read_rows(p["key"], rel_lo[0], rel_hi[0])
            sub = block[(slice(None),) + tuple(slice(a, b) for a, b in zip(rel_lo[1:], rel_hi[1:]))]
            out[tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))] = sub
            covered += sub.size
            del block, sub
        for (p_start, p_size), group in flat_groups.items():
            whole = list(p_start) == start and list(p_size) == size
            buf = out if whole else np.empty(p_size, out.dtype)
            flat, got = buf.reshape(-1), 0
            for p in group:
                lo, hi = p["flat"]
                self._reader(p["file"]).read_flat(p["key"], 0, hi - lo, out=flat[lo:hi])
                got += hi - lo
            if whole:
                covered += got
                continue
            if got != _numel(p_size):
                raise CheckpointError(f"{self.meta_path}: tensor {name}: the flat pieces of region start={list(p_start)} "
                                      f"size={list(p_size)} cover {got} of {_numel(p_size)} elements: incomplete")
            lo, hi = _intersect(p_start, p_size, start, size)
            src = buf[tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, p_start))]
            out[tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))] = src
            covered += src.size
        if covered != out.size:
            raise CheckpointError(f"{self.meta_path}: tensor {name} region start={start} size={size}: the pieces "
                                  f"cover {covered} of {out.size} elements: the checkpoint is incomplete")
        return out


class RankFileWriter:
    """Collects (tensor name, full shape, piece region, array) for one file, then writes it in one streaming pass.
    Arrays may be given as callables producing them, so a converter holds one tensor at a time."""

    def __init__(self, directory: Path, file: str):
        self.directory, self.file = Path(directory), file
        self.items: list[tuple[str, str, tuple, list, list, Optional[tuple], object]] = []

    def add(self, name: str, dtype: str, full_shape, start, size, data, flat: Optional[tuple[int, int]] = None,
            stored_shape=None) -> None:
        stored = tuple(stored_shape) if stored_shape is not None else (
            (flat[1] - flat[0],) if flat is not None else tuple(size))
        self.items.append((name, dtype, tuple(full_shape), list(start), list(size), flat, data, stored))

    def write(self, on_bytes: Optional[Callable[[int], None]] = None) -> tuple[dict, dict]:
        """Write the file; returns ({file: {sha256, bytes}}, {tensor: {shape, dtype, pieces}})."""
        writer = SafetensorsWriter(self.directory / self.file,
                                   [(name, dtype, stored) for name, dtype, _, _, _, _, _, stored in self.items])
        tensors: dict[str, dict] = {}
        try:
            for name, dtype, full, start, size, flat, data, stored in self.items:
                array = data() if callable(data) else data
                writer.write(name, np.asarray(array).reshape(stored))
                del array
                if on_bytes is not None:
                    on_bytes(_numel(stored) * np.dtype(STORAGE[dtype]).itemsize)
                tensors[name] = {"shape": list(full), "dtype": dtype,
                                 "pieces": [piece(self.file, name, start, size, flat)]}
        except BaseException:
            writer.abort()
            raise
        sha, nbytes = writer.close()
        return {self.file: {"sha256": sha, "bytes": nbytes}}, tensors


def merge_tensors(into: dict, tensors: dict) -> None:
    for name, t in tensors.items():
        if name in into:
            if into[name]["shape"] != t["shape"] or into[name]["dtype"] != t["dtype"]:
                raise CheckpointError(f"tensor {name}: ranks disagree on its full shape/dtype")
            into[name]["pieces"].extend(t["pieces"])
        else:
            into[name] = {"shape": t["shape"], "dtype": t["dtype"], "pieces": list(t["pieces"])}


def write_metadata(directory: Path, meta: dict) -> None:
    meta = {"format": FORMAT, "version": VERSION, **meta}
    meta[META_SHA] = metadata_digest(meta)
    try:
        with open(directory / METADATA, "w") as f:
            json.dump(meta, f, indent=1, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise with_path(exc, directory / METADATA) from None
    fsync_dir(directory)
