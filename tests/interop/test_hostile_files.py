"""Foreign checkpoints carrying code: a pickle whose payload creates a directory is planted in each format gpt3d
imports (Megatron legacy .pt, Megatron torch_dist .metadata, DeepSpeed ZeRO .pt). Without --trusted the payload
never runs and `gpt3d convert` prints one line naming the file and --trusted."""
from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import pickle
import types

import pytest
import torch

from gpt3d.checkpoint.convert import run as convert_main
from gpt3d.interop import InteropError, load_deepspeed, load_megatron, save_megatron
from gpt3d.interop.dcp_metadata import read_dcp_metadata

from .test_megatron import SPECS, model_config, random_gpt3d_state


class Payload:
    """Unpickling this calls os.mkdir(target): proof that code from the file ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


def convert_args(src, dst, fmt: str, trusted: bool = False) -> argparse.Namespace:
    return argparse.Namespace(src=str(src), dst=str(dst), tp=None, pp=None, vp=None, dp=None, from_format=fmt,
                              to_format="gpt3d", megatron_format="torch_dist", trusted=trusted, tag=None,
                              config=None, overrides=[], quiet=True)


def refused_by_convert(capsys, src, dst, fmt: str, path) -> None:
    assert convert_main(convert_args(src, dst, fmt)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gpt3d convert: error: {path}: "), err
    assert "--trusted" in err and not dst.exists()


def megatron_checkpoint(tmp_path, fmt: str):
    cfg = dataclasses.replace(model_config(SPECS[1]), n_layers=2)
    save_megatron(random_gpt3d_state(cfg, 3), cfg, str(tmp_path / "src"), iteration=4, fmt=fmt)
    return tmp_path / "src", tmp_path / "src" / "iter_0000004"


def test_megatron_legacy_pt_payload_does_not_run(tmp_path, capsys):
    src, iteration = megatron_checkpoint(tmp_path, "legacy")
    marker = tmp_path / "pwned"
    path = iteration / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(path, weights_only=False)
    state["payload"] = Payload(marker)
    torch.save(state, path)
    with pytest.raises(InteropError, match=rf"^{path}: cannot be read with torch.load\(weights_only=True\) .*"
                                           rf"pass --trusted \(Python: trusted=True\)\.$"):
        load_megatron(str(src))
    refused_by_convert(capsys, src, tmp_path / "dst", "megatron", path)
    assert not marker.exists()


def test_megatron_torch_dist_metadata_payload_does_not_run(tmp_path, capsys):
    src, iteration = megatron_checkpoint(tmp_path, "torch_dist")
    marker = tmp_path / "pwned"
    path = iteration / ".metadata"
    index = read_dcp_metadata(str(path), trusted=False)  # the real index written by torch.distributed.checkpoint
    index.planner_data = Payload(marker)
    with open(path, "wb") as fh:
        pickle.dump(index, fh)
    with pytest.raises(InteropError, match=rf"^{path}: refused: global posix.mkdir is not one of "
                                           rf"torch.distributed.checkpoint's metadata classes; reading it would run "
                                           rf"code from the file. If you trust this checkpoint, pass --trusted "
                                           rf"\(Python: trusted=True\)$"):
        load_megatron(str(src))
    refused_by_convert(capsys, src, tmp_path / "dst", "megatron", path)
    assert not marker.exists()


def test_megatron_torch_dist_real_index_reads_without_trust(tmp_path):
    """The allow-list covers every global DCP writes: an untouched torch_dist export round trips exactly."""
    cfg = dataclasses.replace(model_config(SPECS[1]), n_layers=2)
    sd = random_gpt3d_state(cfg, 3)
    save_megatron(sd, cfg, str(tmp_path), iteration=4, fmt="torch_dist")
    _, back = load_megatron(str(tmp_path))
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_deepspeed_pt_payload_does_not_run(tmp_path, capsys):
    src = tmp_path / "zero"
    tag = src / "global_step1"
    tag.mkdir(parents=True)
    (src / "latest").write_text("global_step1")
    marker = tmp_path / "pwned"
    torch.save({"module": {}, "payload": Payload(marker)}, tag / "mp_rank_00_model_states.pt")
    path = tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": 2}, "payload": Payload(marker)}, path)
    with pytest.raises(InteropError, match=rf"^{tag}/mp_rank_00_model_states.pt: cannot be read with "
                                           rf"torch.load\(weights_only=True\) .* pass --trusted"):
        load_deepspeed(str(src))
    assert not marker.exists()
    args = convert_args(src, tmp_path / "dst", "deepspeed")
    args.config = "tiny"
    assert convert_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trusted" in err and "mp_rank_00_model_states.pt" in err, err
    assert not marker.exists()


def test_deepspeed_tag_must_be_a_plain_name(tmp_path):
    (tmp_path / "latest").write_text("../../elsewhere")
    with pytest.raises(InteropError, match=r"checkpoint tag '../../elsewhere' is not a plain folder name inside the "
                                           r"checkpoint directory; pass --tag NAME"):
        load_deepspeed(str(tmp_path))


class EnumThroughGetattrPickler(pickle.Pickler):
    """Pickles Enum members as CPython 3.11.2 does, getattr(cls, name) (3.11.7 pickles cls(value)); `extra` maps an
    object to a reduce tuple of the test's choosing (a getattr a safe reader must refuse)."""

    extra: dict = {}

    def reducer_override(self, obj):
        if id(obj) in self.extra:
            return self.extra[id(obj)]
        if isinstance(obj, enum.Enum):
            return getattr, (type(obj), obj.name)
        return NotImplemented


def pickle_module_of(pickler: type) -> types.ModuleType:
    """A stand-in pickle module for torch.save(pickle_module=...) whose Pickler is `pickler`."""
    module = types.ModuleType("enum_through_getattr_pickle")
    module.Pickler = pickler
    return module


def test_megatron_torch_dist_index_pickled_by_python_3_11_2_reads_without_trust(tmp_path, capsys):
    """Python 3.11.2 (Debian 12's python3) pickles DCP's _MEM_FORMAT_ENCODING members through builtins.getattr: such
    an index reads without --trusted and round trips exactly; a getattr of anything but a member is refused."""
    from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING
    cfg = dataclasses.replace(model_config(SPECS[1]), n_layers=2)
    sd = random_gpt3d_state(cfg, 3)
    save_megatron(sd, cfg, str(tmp_path / "src"), iteration=4, fmt="torch_dist")
    path = tmp_path / "src" / "iter_0000004" / ".metadata"
    index = read_dcp_metadata(str(path), trusted=False)  # the real index, read without running code from it
    with open(path, "wb") as fh:
        EnumThroughGetattrPickler(fh).dump(index)
    assert b"getattr" in path.read_bytes() and b"TORCH_CONTIGUOUS_FORMAT" in path.read_bytes()
    _, back = load_megatron(str(tmp_path / "src"))
    assert all(torch.equal(back[k], sd[k]) for k in sd)

    index.planner_data = marker = object()
    pickler_extra = {id(marker): (getattr, (_MEM_FORMAT_ENCODING, "__subclasses__"))}
    with open(path, "wb") as fh:
        pickler = EnumThroughGetattrPickler(fh)
        pickler.extra = pickler_extra
        pickler.dump(index)
    with pytest.raises(InteropError, match=rf"^{path}: refused: builtins.getattr names only a member of "
                                           rf"torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING here, not "
                                           rf"getattr\(<enum '_MEM_FORMAT_ENCODING'>, '__subclasses__'\); reading "
                                           rf"it would run code from the file\. If you trust this checkpoint, pass "
                                           rf"--trusted \(Python: trusted=True\)$"):
        load_megatron(str(tmp_path / "src"))
    refused_by_convert(capsys, tmp_path / "src", tmp_path / "dst", "megatron", path)


def test_deepspeed_enum_pickled_by_python_3_11_2_reads_without_trust(tmp_path):
    """DeepSpeed's optimizer states hold a ZeroStageEnum member, which Python 3.11.2 pickles through builtins.getattr:
    torch.load(weights_only=True) with gpt3d's DeepSpeed allow-list reads it; a getattr of anything but a member of
    that enum is refused."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from gpt3d.interop.deepspeed import _weights_only_loads

    path = tmp_path / "optim_states.pt"
    state = {"zero_stage": ZeroStageEnum.gradients, "exp_avg": torch.arange(4.0)}
    torch.save(state, path, pickle_module=pickle_module_of(EnumThroughGetattrPickler))
    assert b"getattr" in path.read_bytes()
    with _weights_only_loads():
        back = torch.load(path, weights_only=True)
    assert back["zero_stage"] is ZeroStageEnum.gradients and torch.equal(back["exp_avg"], state["exp_avg"])

    marker = object()
    hostile = type("Hostile", (EnumThroughGetattrPickler,), {
        "extra": {id(marker): (getattr, (ZeroStageEnum, "__subclasses__"))}})
    torch.save({"zero_stage": marker}, path, pickle_module=pickle_module_of(hostile))
    with _weights_only_loads(), pytest.raises(pickle.UnpicklingError,
                                              match=r"builtins.getattr names only a member of "
                                                    r"deepspeed.runtime.zero.config.ZeroStageEnum here, not "
                                                    r"getattr\(<enum 'ZeroStageEnum'>, '__subclasses__'\)"):
        torch.load(path, weights_only=True)
