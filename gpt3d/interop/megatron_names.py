"""Megatron parameter names <-> gpt3d's, and how Megatron tensor-parallel shards each tensor.

Three naming schemes are read: megatron-core (local spec), megatron-core with Transformer-Engine fused norms (the norm
weights live in linear_qkv / linear_fc1; torch_dist checkpoints always use these), and the pre-core nested
`language_model.{embedding, encoder|transformer, output_layer}` names. Only megatron-core names are written.
"""
from __future__ import annotations

from typing import Optional

# gpt3d block sub-name -> megatron-core (local spec) layer sub-name.
CORE_LAYER = {
    "ln1.weight": "input_layernorm.weight", "ln1.bias": "input_layernorm.bias",
    "attn.qkv.weight": "self_attention.linear_qkv.weight", "attn.qkv.bias": "self_attention.linear_qkv.bias",
    "attn.proj.weight": "self_attention.linear_proj.weight", "attn.proj.bias": "self_attention.linear_proj.bias",
    "ln2.weight": "pre_mlp_layernorm.weight", "ln2.bias": "pre_mlp_layernorm.bias",
    "mlp.fc1.weight": "mlp.linear_fc1.weight", "mlp.fc1.bias": "mlp.linear_fc1.bias",
    "mlp.fc2.weight": "mlp.linear_fc2.weight", "mlp.fc2.bias": "mlp.linear_fc2.bias",
}
# Transformer-Engine fused-norm names (and torch_dist's, whatever the spec).
TE_NORMS = {
    "ln1.weight": "self_attention.linear_qkv.layer_norm_weight", "ln1.bias": "self_attention.linear_qkv.layer_norm_bias",
    "ln2.weight": "mlp.linear_fc1.layer_norm_weight", "ln2.bias": "mlp.linear_fc1.layer_norm_bias",
}
DIST_LAYER = {**CORE_LAYER, **TE_NORMS}
# The linears of a layer: each also emits `<linear>._extra_state`.
CORE_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")
_PRE_CORE_LAYER = {
    "input_layernorm": "ln1", "input_norm": "ln1", "post_attention_layernorm": "ln2", "post_attention_norm": "ln2",
    "self_attention.query_key_value": "attn.qkv", "self_attention.dense": "attn.proj",
    "attention.query_key_value": "attn.qkv", "attention.dense": "attn.proj",  # Megatron-LM 2020 (GPT-2 345M)
    "mlp.dense_h_to_4h": "mlp.fc1", "mlp.dense_4h_to_h": "mlp.fc2",
}
_CORE_TO_GPT3D = {**{v: k for k, v in CORE_LAYER.items()}, **{v: k for k, v in TE_NORMS.items()}}
_GLOBAL_CORE = {"embedding.word_embeddings.weight": "embed.tok.weight",
                "embedding.position_embeddings.weight": "embed.pos.weight",
                "decoder.final_layernorm.weight": "final_ln.weight", "decoder.final_layernorm.bias": "final_ln.bias",
                "output_layer.weight": "head.weight"}
GPT3D_TO_CORE_GLOBAL = {v: k for k, v in _GLOBAL_CORE.items()}
_GLOBAL_PRE_CORE = {"language_model.embedding.word_embeddings.weight": "embed.tok.weight",
                    "language_model.embedding.position_embeddings.weight": "embed.pos.weight",
                    "language_model.output_layer.weight": "head.weight",
                    "word_embeddings_for_head.weight": "head.weight"}

# Megatron's tensor-parallel split dim per gpt3d name suffix (absent = replicated on every TP rank).
_SPLIT_DIM = {"embed.tok.weight": 0, "head.weight": 0, "attn.qkv.weight": 0, "attn.qkv.bias": 0,
              "mlp.fc1.weight": 0, "mlp.fc1.bias": 0, "attn.proj.weight": 1, "mlp.fc2.weight": 1}


def split_dim(gpt3d_name: str) -> Optional[int]:
    """The dim Megatron shards this parameter on across TP ranks, or None when every rank holds all of it."""
    if gpt3d_name in _SPLIT_DIM:
        return _SPLIT_DIM[gpt3d_name]
    return _SPLIT_DIM.get(gpt3d_name.split(".", 2)[-1]) if gpt3d_name.startswith("blocks.") else None


def parse_name(name: str) -> Optional[tuple[Optional[int], str]]:
    """(local layer index or None, gpt3d name with `blocks.{i}.` left off for layers) of one Megatron model-dict key,
    in any of the three schemes, or None for a key that holds no weight (`_extra_state`). Raises KeyError for an
    unknown key."""
    if name.endswith("._extra_state"):
        return None
    if name in _GLOBAL_CORE:
        return None, _GLOBAL_CORE[name]
    if name in _GLOBAL_PRE_CORE:
        return None, _GLOBAL_PRE_CORE[name]
    for prefix in ("decoder.layers.", "language_model.encoder.layers.", "language_model.transformer.layers."):
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            if rest in _CORE_TO_GPT3D:
                return int(index), _CORE_TO_GPT3D[rest]
            module, leaf = rest.rsplit(".", 1)
            if module in _PRE_CORE_LAYER:
                return int(index), f"{_PRE_CORE_LAYER[module]}.{leaf}"
            raise KeyError(name)
    for prefix in ("language_model.encoder.", "language_model.transformer."):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            for norm in ("final_layernorm.", "final_norm."):
                if rest.startswith(norm):
                    return None, "final_ln." + rest[len(norm):]
    raise KeyError(name)


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested Megatron model dicts (pre-core) -> dotted names; flat dicts pass through."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
