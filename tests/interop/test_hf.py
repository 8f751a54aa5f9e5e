"""HF GPT-2 <-> gpt3d: weights imported from transformers' own GPT2LMHeadModel give its logits and loss; exports load
with GPT2LMHeadModel.from_pretrained and give gpt3d's logits; bad input gets the exact error."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt3d.interop import (InteropError, hf_config_from_model_config, load_hf_pretrained, model_config_from_hf,
                           save_hf_pretrained, state_dict_from_hf, state_dict_to_hf)

from .conftest import gpt3d_model, tokens

SHAPES = [  # (n_embd, n_head, n_layer, vocab, n_positions, activation, n_inner, tied)
    dict(n_embd=48, n_head=3, n_layer=1, vocab_size=257, n_positions=64, activation_function="gelu_new"),
    dict(n_embd=64, n_head=4, n_layer=3, vocab_size=1000, n_positions=32, activation_function="gelu", n_inner=96),
    dict(n_embd=40, n_head=5, n_layer=2, vocab_size=384, n_positions=16, activation_function="gelu_new",
         tie_word_embeddings=False),
]


def hf_config(**shape) -> GPT2Config:
    eos = shape["vocab_size"] - 1
    return GPT2Config(bos_token_id=eos, eos_token_id=eos, **shape)


def hf_model(attn: str = "eager", seed: int = 0, **shape) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(hf_config(attn_implementation=attn, **shape)).eval()
    assert model.config._attn_implementation == attn
    with torch.no_grad():  # HF inits biases and LayerNorms to 0/1: randomise them so every mapping is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def sdpa_available() -> bool:
    try:
        model = GPT2LMHeadModel(GPT2Config(n_embd=8, n_head=2, n_layer=1, vocab_size=16, n_positions=8,
                                           bos_token_id=15, eos_token_id=15, attn_implementation="sdpa"))
    except (ValueError, ImportError):
        return False
    return model.config._attn_implementation == "sdpa"


ATTNS = ["eager"] + (["sdpa"] if sdpa_available() else [])


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s['n_embd']}h{s['n_head']}L{s['n_layer']}V{s['vocab_size']}")
def test_import_matches_hf_logits_and_loss(shape, attn):
    hf = hf_model(attn, **shape)
    cfg = model_config_from_hf(hf.config)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.seq_len, cfg.vocab_size) == (
        shape["n_layer"], shape["n_embd"], shape["n_head"], shape["n_positions"], shape["vocab_size"])
    model = gpt3d_model(cfg, state_dict_from_hf(hf.state_dict(), cfg))
    ids = tokens(shape["vocab_size"], 2, shape["n_positions"])
    with torch.no_grad():
        hf_out = hf(input_ids=ids, labels=ids)
        ours = model(ids)
        # HF shifts inside: logits at t predict token t+1. gpt3d takes inputs and labels already shifted.
        our_loss = model(ids[:, :-1], ids[:, 1:])
    assert ours.shape == hf_out.logits.shape
    torch.testing.assert_close(ours, hf_out.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(our_loss, hf_out.loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s['n_embd']}L{s['n_layer']}V{s['vocab_size']}")
def test_export_loads_with_from_pretrained(shape, tmp_path):
    cfg = model_config_from_hf(hf_config(**shape))
    sd = state_dict_from_hf(hf_model(seed=1, **shape).state_dict(), cfg)
    ours = gpt3d_model(cfg, sd)
    save_hf_pretrained(sd, cfg, str(tmp_path))
    assert {"config.json", "generation_config.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    for attn in ATTNS:
        loaded = GPT2LMHeadModel.from_pretrained(str(tmp_path), attn_implementation=attn).eval()
        ids = tokens(cfg.vocab_size, 2, cfg.seq_len, seed=3)
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, ours(ids), rtol=0, atol=1e-5)
    # And back: the directory reads into exactly the same gpt3d state dict.
    cfg2, sd2 = load_hf_pretrained(str(tmp_path))
    assert cfg2 == cfg
    assert sd2.keys() == sd.keys() and all(torch.equal(sd2[k], sd[k]) for k in sd)


def test_state_dict_round_trip_is_exact():
    hf = hf_model(**SHAPES[2])
    cfg = model_config_from_hf(hf.config)
    back = state_dict_to_hf(state_dict_from_hf(hf.state_dict(), cfg), cfg)
    expected = {k: v for k, v in hf.state_dict().items()}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[k], expected[k]) for k in back)


def test_vocab_padding_rows_are_zero():
    hf = hf_model(**SHAPES[0])
    cfg = model_config_from_hf(hf.config)
    sd = state_dict_from_hf(hf.state_dict(), cfg)
    assert sd["embed.tok.weight"].shape == (384, 48)
    assert torch.equal(sd["embed.tok.weight"][:257], hf.transformer.wte.weight)
    assert not sd["embed.tok.weight"][257:].any()


def test_sharded_save_pretrained_directory_loads(tmp_path):
    hf = hf_model(**SHAPES[1])
    hf.save_pretrained(str(tmp_path), max_shard_size="100KB")  # transformers' own sharded layout
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    cfg, sd = load_hf_pretrained(str(tmp_path))
    ids = tokens(cfg.vocab_size, 1, cfg.seq_len)
    with torch.no_grad():
        torch.testing.assert_close(gpt3d_model(cfg, sd)(ids), hf(ids).logits, rtol=0, atol=1e-5)
    out = tmp_path / "ours"
    save_hf_pretrained(sd, cfg, str(out), max_shard_bytes=100_000)  # our sharded writer, read by transformers
    assert os.path.exists(out / "model.safetensors.index.json")
    loaded = GPT2LMHeadModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, hf(ids).logits, rtol=0, atol=1e-5)


def test_hf_config_round_trip():
    cfg = model_config_from_hf(hf_config(**SHAPES[1]))
    assert model_config_from_hf(hf_config_from_model_config(cfg)) == cfg


# ---- bad input: the exact error ----

@pytest.mark.parametrize("option, value", [("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
                                           ("add_cross_attention", True), ("scale_attn_weights", False)])
def test_unsupported_hf_options_are_refused(option, value):
    c = hf_config(**SHAPES[0], **{option: value})
    needed = not value
    with pytest.raises(InteropError, match=rf"^hf_config: {option}={value!r} is not supported by gpt3d "
                                           rf"\(it needs {option}={needed}\)"):
        model_config_from_hf(c)


def test_non_gpt2_config_is_refused():
    from transformers import LlamaConfig
    with pytest.raises(InteropError, match=r"^hf_config: model_type is 'llama', not 'gpt2'"):
        model_config_from_hf(LlamaConfig())
    with pytest.raises(InteropError, match=r"activation_function='relu' is not supported"):
        model_config_from_hf(GPT2Config(activation_function="relu"))


def test_missing_unexpected_and_misshaped_keys_are_listed():
    hf = hf_model(**SHAPES[0])
    cfg = model_config_from_hf(hf.config)
    sd = dict(hf.state_dict())
    del sd["transformer.h.0.mlp.c_fc.bias"]
    sd["transformer.h.7.ln_1.weight"] = torch.zeros(48)
    sd["transformer.wpe.weight"] = torch.zeros(32, 48)
    with pytest.raises(InteropError) as err:
        state_dict_from_hf(sd, cfg)
    message = str(err.value)
    assert "missing keys ['h.0.mlp.c_fc.bias']" in message
    assert "unexpected keys ['h.7.ln_1.weight']" in message
    assert "wrong shapes ['wpe.weight: (32, 48) != expected (64, 48)']" in message


def test_old_mask_buffers_are_skipped():
    hf = hf_model(**SHAPES[0])
    cfg = model_config_from_hf(hf.config)
    sd = dict(hf.state_dict())
    sd["transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    sd["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    assert state_dict_from_hf(sd, cfg).keys() == state_dict_from_hf(hf.state_dict(), cfg).keys()


def test_untied_head_mismatch_with_tied_config_is_refused():
    hf = hf_model(**SHAPES[0])
    cfg = model_config_from_hf(hf.config)
    sd = dict(hf.state_dict())
    sd["lm_head.weight"] = torch.zeros_like(sd["transformer.wte.weight"])
    with pytest.raises(InteropError, match="lm_head.weight differs from transformer.wte.weight"):
        state_dict_from_hf(sd, cfg)


def test_export_refuses_bad_state_dict_and_writes_nothing(tmp_path):
    cfg = model_config_from_hf(hf_config(**SHAPES[0]))
    sd = state_dict_from_hf(hf_model(**SHAPES[0]).state_dict(), cfg)
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"][:-1]
    target = tmp_path / "out"
    with pytest.raises(InteropError, match=r"wrong shapes \[blocks.0.attn.qkv.weight: \(143, 48\) != expected \(144, 48\)\]"):
        save_hf_pretrained(sd, cfg, str(target))
    assert not target.exists()


def test_export_refuses_non_gpt2_shapes():
    from gpt3d.config.model import ModelConfig
    with pytest.raises(InteropError, match=r"n_heads \* d_head = 96 != d_model = 48"):
        hf_config_from_model_config(ModelConfig(n_layers=1, d_model=48, n_heads=3, d_head=32))


def test_export_refuses_to_overwrite(tmp_path):
    cfg = model_config_from_hf(hf_config(**SHAPES[0]))
    sd = state_dict_from_hf(hf_model(**SHAPES[0]).state_dict(), cfg)
    save_hf_pretrained(sd, cfg, str(tmp_path))
    with pytest.raises(InteropError, match=r"already holds a model .* pass overwrite=True"):
        save_hf_pretrained(sd, cfg, str(tmp_path))
    save_hf_pretrained(sd, cfg, str(tmp_path), overwrite=True)


def test_pickle_weights_are_refused(tmp_path):
    hf = hf_model(**SHAPES[0])
    hf.config.save_pretrained(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(InteropError, match=r"no model.safetensors or model.safetensors.index.json. It has "
                                           r"pytorch_model.bin \(a pickle"):
        load_hf_pretrained(str(tmp_path))
