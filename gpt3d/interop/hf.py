"""Hugging Face GPT-2 <-> gpt3d: configs, state dicts (Conv1D transposes, fused-QKV order, vocab padding) and the
`save_pretrained` directory format (config.json, model.safetensors or a sharded index, generation_config.json).

Weights are read and written with safetensors only: a pickled `pytorch_model.bin` is refused (re-save it with
`save_pretrained(..., safe_serialization=True)`)."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch

from gpt3d.config.base import ConfigError
from gpt3d.config.model import ModelConfig

from .canonical import check_gpt3d_state_dict, fit_vocab_rows, gpt3d_shapes
from .errors import InteropError
from .qkv import interleaved_to_separate, separate_to_interleaved

# HF activation names -> gpt3d's. gelu_new and gelu_pytorch_tanh are the same tanh approximation.
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# Options of GPT2Config that change the computation in a way gpt3d does not implement: (name, the value gpt3d needs).
_REQUIRED = (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
             ("reorder_and_upcast_attn", False), ("add_cross_attention", False))
# Buffers older transformers releases saved with the weights; they are masks, not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_WEIGHTS_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"


def _as_dict(hf_config: Any) -> dict:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise InteropError(f"hf_config: expected a transformers GPT2Config or its dict, got {type(hf_config).__name__}")


def model_config_from_hf(hf_config: Any, vocab_pad_multiple: int = 128) -> ModelConfig:
    """The gpt3d ModelConfig of a GPT-2 config (a `transformers.GPT2Config` or its config.json dict). Dropout
    probabilities are carried over (resid_pdrop -> hidden_dropout, attn_pdrop -> attn_dropout)."""
    c = _as_dict(hf_config)
    model_type = c.get("model_type")
    if model_type != "gpt2":
        raise InteropError(f"hf_config: model_type is {model_type!r}, not 'gpt2'; only GPT-2 configs convert to gpt3d "
                           f"(pass a GPT2Config or the config.json of a GPT2LMHeadModel)")
    for name, needed in _REQUIRED:
        if name in c and bool(c[name]) != needed:
            raise InteropError(f"hf_config: {name}={c[name]!r} is not supported by gpt3d (it needs {name}={needed}); "
                               f"only standard GPT-2 attention converts")
    act = c.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise InteropError(f"hf_config: activation_function={act!r} is not supported; gpt3d implements "
                           f"{sorted(_ACTIVATIONS)} (gelu_new/gelu_pytorch_tanh -> gelu_tanh, gelu -> gelu)")
    d = c.get("n_embd", 768)
    try:
        return ModelConfig(
            n_layers=c.get("n_layer", 12), d_model=d, n_heads=c.get("n_head", 12), d_ff=c.get("n_inner") or 4 * d,
            seq_len=c.get("n_positions", 1024), vocab_size=c.get("vocab_size", 50257),
            vocab_pad_multiple=vocab_pad_multiple, activation=_ACTIVATIONS[act],
            layernorm_eps=c.get("layer_norm_epsilon", 1e-5), init_std=c.get("initializer_range", 0.02),
            hidden_dropout=float(c.get("resid_pdrop", 0.1)), attn_dropout=float(c.get("attn_pdrop", 0.1)),
            tie_embeddings=bool(c.get("tie_word_embeddings", True)))
    except ConfigError as exc:
        raise InteropError(f"hf_config: gives an invalid gpt3d model config: {exc}") from exc


def hf_config_from_model_config(cfg: ModelConfig):
    """The `transformers.GPT2Config` of a gpt3d model. bos/eos are the last token id (GPT-2's <|endoftext|>)."""
    from transformers import GPT2Config
    if cfg.attn_width != cfg.d_model:
        raise InteropError(f"model config: n_heads * d_head = {cfg.attn_width} != d_model = {cfg.d_model}; GPT-2 "
                           f"requires heads of width d_model / n_heads, so this model cannot be exported to HF")
    if cfg.attention_pattern != "dense":
        raise InteropError(f"model config: attention_pattern={cfg.attention_pattern!r} has block-sparse layers that "
                           f"GPT-2 cannot express; only attention_pattern='dense' exports to HF")
    act = "gelu_new" if cfg.activation == "gelu_tanh" else "gelu"
    eos = cfg.vocab_size - 1
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function=act, layer_norm_epsilon=cfg.layernorm_eps,
        initializer_range=cfg.init_std, resid_pdrop=cfg.hidden_dropout, embd_pdrop=cfg.hidden_dropout,
        attn_pdrop=cfg.attn_dropout, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=eos, eos_token_id=eos,
        architectures=["GPT2LMHeadModel"])


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF GPT-2 names (without the `transformer.` prefix, except lm_head) and shapes for `cfg`."""
    d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (v, d), "wpe.weight": (cfg.seq_len, d)}
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "attn.c_attn.weight": (d, 3 * d),
            p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,), p + "mlp.c_fc.weight": (d, f), p + "mlp.c_fc.bias": (f,),
            p + "mlp.c_proj.weight": (f, d), p + "mlp.c_proj.bias": (d,)})
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


_LAYER_NAMES = {"ln_1": "ln1", "ln_2": "ln2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
                "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _gpt3d_name(hf_name: str) -> str:
    if hf_name == "wte.weight":
        return "embed.tok.weight"
    if hf_name == "wpe.weight":
        return "embed.pos.weight"
    if hf_name.startswith("ln_f."):
        return "final_ln." + hf_name[len("ln_f."):]
    if hf_name == "lm_head.weight":
        return "head.weight"
    _, i, rest = hf_name.split(".", 2)
    module, leaf = rest.rsplit(".", 1)
    return f"blocks.{i}.{_LAYER_NAMES[module]}.{leaf}"


def _strip_prefix(hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names without `transformer.` (GPT2LMHeadModel has it, GPT2Model not), minus the ignored mask buffers."""
    out = {}
    for name, tensor in hf_sd.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        out[name[len("transformer."):] if name.startswith("transformer.") else name] = tensor
    return out


def state_dict_from_hf(hf_sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """gpt3d's full state dict from a GPT-2 state dict (GPT2LMHeadModel or GPT2Model names). A tied `lm_head.weight`
    may be present; it must then equal wte."""
    sd = _strip_prefix(hf_sd)
    expected = _hf_shapes(cfg)
    tied_head = sd.pop("lm_head.weight", None) if cfg.tie_embeddings else None
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: {tuple(sd[k].shape)} != expected {expected[k]}" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise InteropError(
            f"HF GPT-2 state dict does not match the config (n_layer={cfg.n_layers}, n_embd={cfg.d_model}, "
            f"n_inner={cfg.d_ff}, vocab_size={cfg.vocab_size}, n_positions={cfg.seq_len}, tied={cfg.tie_embeddings}): "
            f"missing keys {missing}, unexpected keys {unexpected}, wrong shapes {wrong}. Use the config.json saved "
            f"with these weights (model_config_from_hf).")
    if tied_head is not None and not torch.equal(tied_head, sd["wte.weight"]):
        raise InteropError("HF GPT-2 state dict: lm_head.weight differs from transformer.wte.weight but the config "
                           "ties them; set tie_word_embeddings=False in the config to keep a separate head")
    nh, hd = cfg.n_heads, cfg.d_head
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        if name.endswith(_CONV1D):
            tensor = tensor.t()  # Conv1D stores [in, out]; nn.Linear [out, in]
        if ".c_attn." in name:
            tensor = separate_to_interleaved(tensor, nh, hd)
        if name in ("wte.weight", "lm_head.weight"):
            tensor = fit_vocab_rows(tensor, cfg.vocab_size, cfg.padded_vocab_size)
        out[_gpt3d_name(name)] = tensor.contiguous()
    return {k: out[k] for k in gpt3d_shapes(cfg)}


def state_dict_to_hf(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict (`transformer.*` names, plus lm_head.weight only when untied) from gpt3d's."""
    hf_config_from_model_config(cfg)  # refuses what GPT-2 cannot express
    check_gpt3d_state_dict(sd, cfg, "state_dict_to_hf")
    nh, hd = cfg.n_heads, cfg.d_head
    out: dict[str, torch.Tensor] = {}
    for hf_name in _hf_shapes(cfg):
        tensor = sd[_gpt3d_name(hf_name)]
        if hf_name in ("wte.weight", "lm_head.weight"):
            tensor = tensor[: cfg.vocab_size]
        if ".c_attn." in hf_name:
            tensor = interleaved_to_separate(tensor, nh, hd)
        if hf_name.endswith(_CONV1D):
            tensor = tensor.t()
        out[hf_name if hf_name == "lm_head.weight" else "transformer." + hf_name] = tensor.contiguous().clone()
    return out


def _read_safetensors(directory: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    single = os.path.join(directory, _WEIGHTS_FILE)
    index = os.path.join(directory, _INDEX_FILE)
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InteropError(f"{index}: has no 'weight_map' object; it is not a safetensors index")
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(directory, shard)
            if not os.path.isfile(path):
                raise InteropError(f"{index}: names shard {shard!r}, which is missing from {directory}")
            out.update(load_file(path))
        return out
    pickled = [f for f in ("pytorch_model.bin", "pytorch_model.bin.index.json") if
               os.path.exists(os.path.join(directory, f))]
    hint = (f" It has {pickled[0]} (a pickle, which gpt3d does not load): re-save it with "
            f"`model.save_pretrained(dir, safe_serialization=True)`." if pickled else "")
    raise InteropError(f"{directory}: no {_WEIGHTS_FILE} or {_INDEX_FILE}.{hint}")


def load_hf_pretrained(directory: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, gpt3d state dict) of a GPT-2 `save_pretrained` directory (config.json + safetensors weights)."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise InteropError(f"{directory}: no config.json; point at a directory written by save_pretrained")
    with open(config_path) as fh:
        hf_config = json.load(fh)
    try:
        cfg = model_config_from_hf(hf_config)
    except InteropError as exc:
        raise InteropError(f"{config_path}: {exc}") from exc
    weights = _read_safetensors(directory)
    try:
        return cfg, state_dict_from_hf(weights, cfg)
    except InteropError as exc:
        raise InteropError(f"{directory}: {exc}") from exc


def _shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def save_hf_pretrained(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, directory: str,
                       max_shard_bytes: int = 5 * 2**30, overwrite: bool = False) -> None:
    """Write what `GPT2LMHeadModel.from_pretrained(directory)` loads: config.json, generation_config.json and
    model.safetensors (or model-0000i-of-0000n.safetensors + model.safetensors.index.json above max_shard_bytes).
    A tied lm_head is omitted, as save_pretrained does. Refuses to replace an existing export unless overwrite."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig
    hf_config = hf_config_from_model_config(cfg)
    tensors = state_dict_to_hf(sd, cfg)  # validates everything before anything is written
    existing = [f for f in (os.listdir(directory) if os.path.isdir(directory) else [])
                if f in ("config.json", _INDEX_FILE) or (f.startswith("model") and f.endswith(".safetensors"))]
    if existing and not overwrite:
        raise InteropError(f"{directory}: already holds a model ({sorted(existing)}); choose an empty directory or "
                           f"pass overwrite=True")
    os.makedirs(directory, exist_ok=True)
    for stale in existing:  # a previous export's shards would shadow or contradict the new weights
        os.remove(os.path.join(directory, stale))
    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, _WEIGHTS_FILE), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(directory, fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
            total += sum(t.numel() * t.element_size() for t in shard.values())
        with open(os.path.join(directory, _INDEX_FILE), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    hf_config.save_pretrained(directory)
    GenerationConfig.from_model_config(hf_config).save_pretrained(directory)
