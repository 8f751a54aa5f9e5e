"""Megatron <-> gpt3d, checked by megatron-core's own GPTModel (run by megatron_peer.py in gloo subprocesses at TP=1
and TP=2): megatron's checkpoints (legacy per-rank files and its own torch_dist save) imported into gpt3d give
megatron's logits, and gpt3d's exports loaded by megatron (strict load_state_dict / dist_checkpointing.load) give
gpt3d's logits."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import pytest
import torch

from gpt3d.config.model import ModelConfig
from gpt3d.interop import InteropError, fit_vocab, load_megatron, megatron_padded_vocab, save_megatron
from gpt3d.model.gpt import build_gpt

from .conftest import REPO, free_port, gpt3d_model, tokens

import megatron.core  # noqa: F401  (installed by launchers/setup_env.sh --test)

SPECS = {  # per TP degree: one tied erf-GELU model, one untied tanh-GELU model with d_ff != 4 d
    1: dict(n_layers=2, d_model=48, n_heads=3, d_ff=192, eps=1e-5, activation="gelu", vocab=257, seq_len=32,
            tied=True),
    2: dict(n_layers=2, d_model=64, n_heads=4, d_ff=96, eps=1e-6, activation="gelu_tanh", vocab=300, seq_len=16,
            tied=False),
}
MEGATRON_ITERATION, OUR_ITERATION = 5, 3


def model_config(spec: dict) -> ModelConfig:
    return ModelConfig(n_layers=spec["n_layers"], d_model=spec["d_model"], n_heads=spec["n_heads"],
                       d_ff=spec["d_ff"], seq_len=spec["seq_len"], vocab_size=spec["vocab"],
                       activation=spec["activation"], layernorm_eps=spec["eps"], tie_embeddings=spec["tied"],
                       hidden_dropout=0.0, attn_dropout=0.0, kernels="reference")


def random_gpt3d_state(cfg: ModelConfig, seed: int) -> dict:
    """build_gpt's init has zero biases and unit norms: perturb everything so every mapping is exercised."""
    gen = torch.Generator().manual_seed(seed)
    sd = build_gpt(cfg, seed).state_dict()
    return fit_vocab({k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in sd.items()}, cfg)


def run_peer(job: dict, workdir: pathlib.Path) -> None:
    path = workdir / "job.json"
    path.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "tests.interop.megatron_peer", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module", params=[1, 2], ids=lambda tp: f"tp{tp}")
def megatron_run(request, tmp_path_factory):
    """One megatron subprocess job per TP degree: megatron saves its own random model (legacy + torch_dist) and
    loads gpt3d's two exports; the logits of all three come back."""
    tp = request.param
    spec = SPECS[tp]
    cfg = model_config(spec)
    work = tmp_path_factory.mktemp(f"megatron_tp{tp}")
    ids = tokens(cfg.vocab_size, 2, cfg.seq_len, seed=tp)
    torch.save(ids, work / "ids.pt")
    sd = random_gpt3d_state(cfg, seed=tp)
    save_megatron(sd, cfg, str(work / "ours_legacy"), tp=tp, iteration=OUR_ITERATION)
    save_megatron(sd, cfg, str(work / "ours_dist"), tp=tp, iteration=OUR_ITERATION, fmt="torch_dist")
    common = dict(tokens=str(work / "ids.pt"))
    job = dict(world=tp, port=free_port(), spec=spec, steps=[
        dict(common, mode="save", legacy_dir=str(work / "mcore_legacy"), dist_dir=str(work / "mcore_dist"),
             iteration=MEGATRON_ITERATION, logits=str(work / "mcore_logits.pt")),
        dict(common, mode="load_legacy", checkpoint=str(work / "ours_legacy"), iteration=OUR_ITERATION,
             logits=str(work / "ours_legacy_logits.pt")),
        dict(common, mode="load_dist", checkpoint_dir=str(work / "ours_dist" / f"iter_{OUR_ITERATION:07d}"),
             logits=str(work / "ours_dist_logits.pt")),
    ])
    run_peer(job, work)
    with torch.no_grad():
        ours = gpt3d_model(cfg, sd)(ids)
    return types.SimpleNamespace(tp=tp, cfg=cfg, work=work, ids=ids, ours_logits=ours,
                                 mcore_logits=torch.load(work / "mcore_logits.pt"))


def real_vocab(logits: torch.Tensor, run) -> torch.Tensor:
    """Megatron's logits cover its padded vocabulary (a multiple of 128 * tp); gpt3d's the real one."""
    assert logits.shape[-1] == megatron_padded_vocab(run.cfg.vocab_size, run.tp)
    return logits[..., : run.cfg.vocab_size]


@pytest.mark.parametrize("fmt", ["legacy", "dist"])
def test_megatron_checkpoint_imports_into_gpt3d(megatron_run, fmt):
    cfg, sd = load_megatron(str(megatron_run.work / f"mcore_{fmt}"), trusted=True)
    assert dataclasses.replace(cfg, kernels="reference") == megatron_run.cfg
    with torch.no_grad():
        ours = gpt3d_model(megatron_run.cfg, sd)(megatron_run.ids)
    torch.testing.assert_close(ours, real_vocab(megatron_run.mcore_logits, megatron_run), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["legacy", "dist"])
def test_gpt3d_export_runs_in_megatron(megatron_run, fmt):
    theirs = torch.load(megatron_run.work / f"ours_{fmt}_logits.pt")
    torch.testing.assert_close(megatron_run.ours_logits, real_vocab(theirs, megatron_run), rtol=0, atol=1e-5)


def test_exports_have_megatrons_exact_keys_and_shapes(megatron_run):
    from torch.distributed.checkpoint import FileSystemReader
    work, tp = megatron_run.work, megatron_run.tp

    def dist_index(root: str) -> dict:
        md = FileSystemReader(str(work / root / "iter_{:07d}".format(
            MEGATRON_ITERATION if root.startswith("mcore") else OUR_ITERATION))).read_metadata()
        return {k: tuple(getattr(v, "size", ())) for k, v in md.state_dict_metadata.items()}

    assert dist_index("ours_dist") == dist_index("mcore_dist")
    for rank in range(tp):
        mine = torch.load(work / "ours_legacy" / f"iter_{OUR_ITERATION:07d}" / f"mp_rank_{rank:02d}" /
                          "model_optim_rng.pt", weights_only=False)
        theirs = torch.load(work / "mcore_legacy" / f"iter_{MEGATRON_ITERATION:07d}" / f"mp_rank_{rank:02d}" /
                            "model_optim_rng.pt", weights_only=False)
        shapes = lambda m: {k: None if v is None else tuple(v.shape) for k, v in m.items()}  # noqa: E731
        assert list(shapes(mine["model"]).items()) == list(shapes(theirs["model"]).items())
        assert mine["checkpoint_version"] == theirs["checkpoint_version"] == 3.0
    assert (work / "ours_legacy" / "latest_checkpointed_iteration.txt").read_text() == str(OUR_ITERATION)


# Pre-core names of two Megatron-LM generations, written out from Megatron-LM's own model code (not from gpt3d's
# tables): module attribute names of ParallelTransformerLayer / ParallelAttention / ParallelMLP / ParallelTransformer /
# TransformerLanguageModel, keyed here by the megatron-core name of the same weight.
PRE_CORE_GENERATIONS = {
    # megatron/legacy/model/transformer.py (2023-2024): input_norm, self_attention.{query_key_value, dense},
    # post_attention_norm, mlp.{dense_h_to_4h, dense_4h_to_h}; the stack is `encoder`, its last norm `final_norm`.
    "legacy-2023": ("encoder", "final_norm", {
        "input_layernorm": "input_norm", "pre_mlp_layernorm": "post_attention_norm",
        "self_attention.linear_qkv": "self_attention.query_key_value",
        "self_attention.linear_proj": "self_attention.dense",
        "mlp.linear_fc1": "mlp.dense_h_to_4h", "mlp.linear_fc2": "mlp.dense_4h_to_h"}),
    # megatron/model/transformer.py (2020, the released GPT-2 345M checkpoint): input_layernorm,
    # attention.{query_key_value, dense}, post_attention_layernorm; the stack is `transformer`, `final_layernorm`.
    "gpt2-2020": ("transformer", "final_layernorm", {
        "input_layernorm": "input_layernorm", "pre_mlp_layernorm": "post_attention_layernorm",
        "self_attention.linear_qkv": "attention.query_key_value", "self_attention.linear_proj": "attention.dense",
        "mlp.linear_fc1": "mlp.dense_h_to_4h", "mlp.linear_fc2": "mlp.dense_4h_to_h"}),
}


@pytest.mark.parametrize("generation", sorted(PRE_CORE_GENERATIONS))
def test_pre_core_names_import(megatron_run, tmp_path, generation):
    """The pre-core nesting (language_model.embedding / encoder or transformer / output_layer, Megatron-LM before
    megatron-core) of megatron's own weights gives megatron's logits."""
    stack, final_norm, renames = PRE_CORE_GENERATIONS[generation]
    src = megatron_run.work / "mcore_legacy" / f"iter_{MEGATRON_ITERATION:07d}"
    for rank_dir in sorted(os.listdir(src)):
        ckpt = torch.load(src / rank_dir / "model_optim_rng.pt", weights_only=False)
        layers: dict = {}
        old: dict = {"embedding": {}, stack: layers}
        for name, value in ckpt["model"].items():
            if value is None:
                continue
            if name.startswith("embedding."):
                kind = name.split(".")[1]
                old["embedding"][kind] = {"weight": value}
            elif name.startswith("decoder.layers."):
                _, _, i, rest = name.split(".", 3)
                module, leaf = rest.rsplit(".", 1)
                layers[f"layers.{i}.{renames[module]}.{leaf}"] = value
            elif name.startswith("decoder.final_layernorm."):
                layers[f"{final_norm}." + name.rsplit(".", 1)[1]] = value
            elif name == "output_layer.weight":
                old["output_layer"] = {"weight": value}
        ckpt["model"] = {"language_model": old}
        (tmp_path / "iter_0000005" / rank_dir).mkdir(parents=True)
        torch.save(ckpt, tmp_path / "iter_0000005" / rank_dir / "model_optim_rng.pt")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("5")
    cfg, sd = load_megatron(str(tmp_path), trusted=True)
    with torch.no_grad():
        ours = gpt3d_model(megatron_run.cfg, sd)(megatron_run.ids)
    torch.testing.assert_close(ours, real_vocab(megatron_run.mcore_logits, megatron_run), rtol=0, atol=1e-5)


def test_old_checkpoint_versions_qkv_orders(megatron_run, tmp_path):
    """checkpoint_version 0 stored each rank's qkv rows [3, heads, d_head], 1.0 [heads, d_head, 3]."""
    _, expected = load_megatron(str(megatron_run.work / "mcore_legacy"), trusted=True)
    heads = megatron_run.cfg.n_heads // megatron_run.tp
    for version in (0, 1.0):
        root = tmp_path / f"v{version}"
        shutil.copytree(megatron_run.work / "mcore_legacy", root)
        for path in root.glob("iter_*/mp_rank_*/model_optim_rng.pt"):
            ckpt = torch.load(path, weights_only=False)
            for name, t in ckpt["model"].items():
                if t is not None and "linear_qkv" in name:
                    rest = tuple(t.shape[1:])
                    per_head = t.reshape((heads, 3, -1) + rest)  # stored order: [heads, 3, d_head]
                    old = per_head.transpose(0, 1) if version == 0 else per_head.transpose(1, 2)
                    ckpt["model"][name] = old.reshape(t.shape).clone()
            ckpt["checkpoint_version"] = version
            torch.save(ckpt, path)
        _, sd = load_megatron(str(root), trusted=True)
        assert all(torch.equal(sd[k], expected[k]) for k in expected), version


# ---- layouts without a megatron process: exact round trips ----

@pytest.mark.parametrize("tp, pp", [(1, 2), (2, 2), (4, 1), (4, 4)])
@pytest.mark.parametrize("fmt", ["legacy", "torch_dist"])
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_any_layout(tmp_path, tp, pp, fmt, tied):
    cfg = dataclasses.replace(model_config(SPECS[2]), n_layers=4, tie_embeddings=tied)
    sd = random_gpt3d_state(cfg, seed=11)
    save_megatron(sd, cfg, str(tmp_path), tp=tp, pp=pp, iteration=7, fmt=fmt)
    if fmt == "legacy":
        names = sorted(os.listdir(tmp_path / "iter_0000007"))
        assert names == sorted(f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "") for t in range(tp)
                               for p in range(pp))
        first = torch.load(tmp_path / "iter_0000007" / names[0] / "model_optim_rng.pt", weights_only=False)
        assert first["model"]["embedding.word_embeddings.weight"].shape[0] == megatron_padded_vocab(300, tp) // tp
    loaded_cfg, back = load_megatron(str(tmp_path))  # our args pickle only argparse.Namespace: no trust needed
    assert dataclasses.replace(loaded_cfg, kernels="reference") == cfg
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_gpt2_vocab_padding():
    assert [megatron_padded_vocab(50257, tp) for tp in (1, 2, 8)] == [50304, 50432, 51200]


# ---- bad input: the exact error ----

def test_untrusted_pickle_needs_the_flag(tmp_path):
    cfg = model_config(SPECS[1])
    save_megatron(random_gpt3d_state(cfg, 1), cfg, str(tmp_path), iteration=2)
    path = tmp_path / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt"
    ckpt = torch.load(path, weights_only=False)
    ckpt["args"].save = pathlib.PurePosixPath("/ckpt")  # real Megatron args hold objects beyond a Namespace
    torch.save(ckpt, path)
    with pytest.raises(InteropError, match=rf"^{path}: cannot be read with torch.load\(weights_only=True\) .*"
                                           rf"pass --trusted \(Python: trusted=True\)\.$"):
        load_megatron(str(tmp_path))
    loaded, _ = load_megatron(str(tmp_path), trusted=True)
    assert loaded.n_layers == cfg.n_layers


def test_bad_layouts_are_refused_before_writing(tmp_path):
    cfg = model_config(SPECS[1])  # 3 heads, 2 layers
    sd = random_gpt3d_state(cfg, 1)
    with pytest.raises(InteropError, match=r"^save_megatron: tp=2 does not divide n_heads=3 \(Megatron shards whole "
                                           r"heads\); pp=3 does not divide n_layers=2; pick a layout"):
        save_megatron(sd, cfg, str(tmp_path / "a"), tp=2, pp=3)
    with pytest.raises(InteropError, match=r"fmt='zarr' is not one of \('legacy', 'torch_dist'\)"):
        save_megatron(sd, cfg, str(tmp_path / "a"), fmt="zarr")
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(InteropError, match=r"^save_megatron: .* missing keys \['blocks.1.mlp.fc2.bias'\]"):
        save_megatron(sd, cfg, str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_overwrite_missing_ranks_and_no_tracker(tmp_path):
    cfg = dataclasses.replace(model_config(SPECS[2]), n_layers=2)
    sd = random_gpt3d_state(cfg, 1)
    save_megatron(sd, cfg, str(tmp_path), tp=2)
    with pytest.raises(InteropError, match=r"already holds a Megatron checkpoint .* pass overwrite=True"):
        save_megatron(sd, cfg, str(tmp_path), tp=2)
    shutil.rmtree(tmp_path / "iter_0000000" / "mp_rank_01")
    with pytest.raises(InteropError, match=r"rank folders \['mp_rank_01'\] are missing \(checkpoint args say tp=2, "
                                           r"pp=1\); copy the complete checkpoint"):
        load_megatron(str(tmp_path))
    with pytest.raises(InteropError, match=rf"^{tmp_path / 'nothing'}: no latest_checkpointed_iteration.txt"):
        load_megatron(str(tmp_path / "nothing"))


def test_unsupported_megatron_architecture_is_refused(tmp_path):
    cfg = model_config(SPECS[1])
    save_megatron(random_gpt3d_state(cfg, 1), cfg, str(tmp_path))
    path = tmp_path / "iter_0000000" / "mp_rank_00" / "model_optim_rng.pt"
    ckpt = torch.load(path, weights_only=False)
    ckpt["args"].swiglu = True
    ckpt["args"].position_embedding_type = "rope"
    torch.save(ckpt, path)
    with pytest.raises(InteropError, match=r"the Megatron model uses swiglu=True \(SwiGLU MLP\), "
                                           r"position_embedding_type='rope', which gpt3d's GPT model does not"):
        load_megatron(str(tmp_path))
