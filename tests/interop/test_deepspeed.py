"""DeepSpeed ZeRO -> gpt3d, checked by DeepSpeed's own engine: a tiny gpt3d model trained 3 steps on 2 gloo ranks with
ZeRO-2 (and ZeRO-3) and saved by engine.save_checkpoint; load_deepspeed (DeepSpeed's zero_to_fp32 consolidation)
gives a fresh gpt3d model the engine's logits. The first run JIT-compiles DeepSpeed's shm comm op (~40 s, more on a
loaded machine) into ~/.cache/gpt3d/torch_extensions; later runs reuse it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gpt3d.interop import InteropError, load_deepspeed

from .conftest import REPO, free_port, gpt3d_model, tokens

import deepspeed  # noqa: F401  (installed by launchers/setup_env.sh --test)

SPEC = dict(n_layers=2, d_model=32, n_heads=4, d_ff=80, seq_len=16, vocab_size=200)
STAGES = (2, 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from .deepspeed_peer import model_config
    out = tmp_path_factory.mktemp("deepspeed")
    ids = tokens(SPEC["vocab_size"], 2, SPEC["seq_len"], seed=5)
    torch.save(ids, out / "ids.pt")
    job = dict(world=2, port=free_port(), spec=SPEC, tokens=str(out / "ids.pt"), out=str(out), stages=list(STAGES))
    (out / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, DS_BUILD_OPS="0")
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/gpt3d/torch_extensions"))
    proc = subprocess.run([sys.executable, "-m", "tests.interop.deepspeed_peer", str(out / "job.json")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, ids, model_config(SPEC)


@pytest.mark.parametrize("stage", STAGES)
def test_zero_checkpoint_gives_the_engines_logits(trained, stage):
    out, ids, cfg = trained
    directory = out / f"zero{stage}"
    assert (directory / "latest").read_text().strip() == "global_step3"
    sd = load_deepspeed(str(directory), cfg=cfg)
    with torch.no_grad():
        ours = gpt3d_model(cfg, sd)(ids)
    engine_logits = torch.load(out / f"zero{stage}_logits.pt")
    torch.testing.assert_close(ours, engine_logits, rtol=0, atol=1e-5)
    from gpt3d.model.gpt import build_gpt
    initial = build_gpt(cfg, seed=0).state_dict()
    assert not torch.equal(sd["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])  # it trained


def test_explicit_tag_and_no_config(trained):
    out, _, cfg = trained
    sd = load_deepspeed(str(out / "zero2"), tag="global_step3")
    assert set(sd) == set(load_deepspeed(str(out / "zero2"), cfg=cfg))


def test_bad_directories_get_clear_errors(trained, tmp_path):
    out, _, cfg = trained
    with pytest.raises(InteropError, match=rf"^{tmp_path}: no 'latest' file naming the checkpoint tag; pass --tag "
                                           rf"\(Python: tag=\)"):
        load_deepspeed(str(tmp_path))
    with pytest.raises(InteropError, match=r"the checkpoint tag 'global_step9' has no folder"):
        load_deepspeed(str(out / "zero2"), tag="global_step9")
    from gpt3d.config.model import ModelConfig
    wrong = ModelConfig(**{**SPEC, "n_layers": 3}, kernels="reference")
    with pytest.raises(InteropError, match=r"missing keys \['blocks.2.ln1.weight'"):
        load_deepspeed(str(out / "zero2"), cfg=wrong)


def test_file_carrying_code_needs_trust(trained, tmp_path):
    import pathlib
    import shutil
    out, _, cfg = trained
    copy = tmp_path / "ckpt"
    shutil.copytree(out / "zero2", copy)
    path = copy / "global_step3" / "mp_rank_00_model_states.pt"
    states = torch.load(path, weights_only=False)
    states["note"] = pathlib.PurePosixPath("/somewhere")  # not plain data: weights_only refuses it
    torch.save(states, path)
    with pytest.raises(InteropError, match=rf"^{path}: cannot be read with torch.load\(weights_only=True\) .* if you "
                                           rf"trust this checkpoint, pass --trusted \(Python: trusted=True\)$"):
        load_deepspeed(str(copy), cfg=cfg)
    trusted = load_deepspeed(str(copy), cfg=cfg, trusted=True)
    plain = load_deepspeed(str(out / "zero2"), cfg=cfg)
    assert all(torch.equal(trusted[k], plain[k]) for k in plain)


def test_gpt3d_convert_imports_the_zero_checkpoint(trained, tmp_path):
    """`gpt3d convert ZERO_DIR DST --from deepspeed --config C --tp 2`: a gpt3d checkpoint holding the same weights."""
    import argparse

    import numpy as np
    import yaml

    from gpt3d.checkpoint import Checkpoint
    from gpt3d.checkpoint.convert import convert
    out, _, cfg = trained
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model": {**SPEC, "vocab_pad_multiple": cfg.vocab_pad_multiple}}))
    dst = tmp_path / "imported"
    convert(argparse.Namespace(src=str(out / "zero2"), dst=str(dst), tp=2, pp=1, vp=None, dp=None,
                               from_format="deepspeed", to_format="gpt3d", megatron_format="torch_dist",
                               trusted=False, tag=None, config=str(config), overrides=[], quiet=True))
    ckpt = Checkpoint(dst)
    ckpt.verify()
    assert ckpt.layout["tp"] == 2
    for name, value in load_deepspeed(str(out / "zero2"), cfg=cfg).items():
        assert np.array_equal(ckpt.read(f"model/{name}"), value.detach().numpy()), name
