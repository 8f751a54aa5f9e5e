"""Converters between gpt3d's full state dict and the peers' formats: Hugging Face GPT-2, Megatron (legacy per-rank
and torch_dist), DeepSpeed ZeRO. Each peer's own library is imported lazily, only by the converter that needs it."""
from .canonical import check_gpt3d_state_dict, fit_vocab, gpt3d_shapes
from .deepspeed import load_deepspeed
from .errors import InteropError
from .megatron import load_megatron, save_megatron
from .megatron_args import megatron_padded_vocab
from .hf import (hf_config_from_model_config, load_hf_pretrained, model_config_from_hf, save_hf_pretrained,
                 state_dict_from_hf, state_dict_to_hf)

__all__ = [
    "InteropError", "check_gpt3d_state_dict", "fit_vocab", "gpt3d_shapes",
    "hf_config_from_model_config", "load_hf_pretrained", "model_config_from_hf", "save_hf_pretrained",
    "state_dict_from_hf", "state_dict_to_hf",
    "load_deepspeed", "load_megatron", "megatron_padded_vocab", "save_megatron",
]
