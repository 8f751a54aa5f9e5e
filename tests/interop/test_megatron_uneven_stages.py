"""stage_model_dict with an uneven pipeline split (megatron-core's num_layers_in_first_pipeline_stage): every gpt3d
block lands, unchanged, in exactly one stage under that stage's local layer numbering; the default split is unchanged."""
from __future__ import annotations

import torch

from gpt3d.config.model import ModelConfig
from gpt3d.interop.megatron_legacy import stage_model_dict
from gpt3d.interop.megatron_names import CORE_LAYER
from gpt3d.model.gpt import build_gpt

CFG = ModelConfig(n_layers=6, d_model=32, n_heads=2, seq_len=8, vocab_size=64, vocab_pad_multiple=64,
                  tie_embeddings=False, hidden_dropout=0.0, attn_dropout=0.0)


def _full_state() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in build_gpt(CFG, seed=3).state_dict().items()}


def _assert_stages_hold(dicts: dict, stages: dict, sd: dict) -> None:
    for rank, layers in stages.items():
        local_ids = {int(k.split(".")[2]) for k in dicts[rank] if k.startswith("decoder.layers.")}
        assert local_ids == set(range(len(layers)))
        for local, block in enumerate(layers):
            for sub, core in CORE_LAYER.items():
                assert torch.equal(dicts[rank][f"decoder.layers.{local}.{core}"], sd[f"blocks.{block}.{sub}"])
    assert "embedding.word_embeddings.weight" in dicts[0] and "embedding.word_embeddings.weight" not in dicts[1]
    assert torch.equal(dicts[1]["output_layer.weight"], sd["head.weight"])


def test_uneven_split_places_each_block_once_under_local_numbers():
    sd = _full_state()
    stages = {0: list(range(4)), 1: [4, 5]}
    _assert_stages_hold({r: stage_model_dict(sd, CFG, 0, 1, r, 2, layers) for r, layers in stages.items()}, stages, sd)


def test_default_split_is_three_and_three():
    sd = _full_state()
    _assert_stages_hold({r: stage_model_dict(sd, CFG, 0, 1, r, 2) for r in range(2)}, {0: [0, 1, 2], 1: [3, 4, 5]}, sd)
