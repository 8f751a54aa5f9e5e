"""The GPT model: token + learned position embeddings, pre-LN blocks, final LayerNorm, head tied to the embedding.

`GPTStage` is a contiguous slice of the model (the whole model when it holds every layer and both ends), so pipeline
parallelism builds one per (virtual) stage from the same code. Parameter names are global: blocks are keyed by their
global layer index, and a tied head on another stage than the embedding is named after the embedding it copies.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from gpt3d.config.model import ModelConfig

from .layers import Block, Embedding, LayerNorm, LMHead
from .packing import PackedLayout


def sparse_layout(cfg: ModelConfig) -> Optional[torch.Tensor]:
    """The block layout [heads, nb, nb] of the sparse layers at model.seq_len, or None when every layer is dense."""
    if "sparse" not in cfg.layer_attention_kinds():
        return None
    from gpt3d.sparse.layout import make_layout
    with torch.device("cpu"):  # a real tensor even while the model is built on the meta device
        return make_layout(cfg.sparse, cfg.n_heads, cfg.seq_len)


class GPTStage(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_ids: Sequence[int], first: bool, last: bool):
        super().__init__()
        self.cfg = cfg
        self.first, self.last = first, last
        self.layer_ids = list(layer_ids)
        self.recompute_full = False  # full activation recomputation per block (set by the parallel plan)
        self.recompute_rng_context = None
        kinds = cfg.layer_attention_kinds()
        layout = sparse_layout(cfg)
        self.embed = Embedding(cfg) if first else None
        self.blocks = nn.ModuleDict(
            {str(i): Block(cfg, kinds[i], layout if kinds[i] == "sparse" else None) for i in self.layer_ids})
        self.final_ln = LayerNorm(cfg.d_model, cfg.layernorm_eps, cfg.kernels) if last else None
        self.head = None
        # Extra linear heads on the final hidden state (classify, reward), TP-replicated; None when the model has none.
        self.task_heads = nn.ModuleDict({name: nn.Linear(cfg.d_model, width) for name, width in
                                         cfg.task_heads.items()}) if last and cfg.task_heads else None
        # The loss of a fine-tuning objective: objective(stage, final hidden, labels) (gpt3d/finetune/objectives.py).
        self.objective = None
        if last:
            own_weight = not cfg.tie_embeddings or not first
            self.head = LMHead(cfg, own_weight)
            if own_weight and cfg.tie_embeddings:
                # A tied copy on the last stage: same init (same name), gradients summed with the embedding's.
                self.head.weight.full_name = "embed.tok.weight"
                self.head.weight.tied_copy = True

    def head_weight(self) -> torch.Tensor:
        return self.head.weight if self.head.weight is not None else self.embed.tok.weight

    def run_blocks(self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block in self.blocks.values():
            if self.recompute_full and torch.is_grad_enabled():
                from gpt3d.parallel.recompute import checkpoint
                hidden = checkpoint(block, hidden, mask, rng_context=self.recompute_rng_context)
            else:
                hidden = block(hidden, mask)
        return hidden

    def forward(self, inputs: torch.Tensor, labels=None, layout: Optional[PackedLayout] = None):
        """inputs: token ids [b, s] on the first stage, else hidden states. Returns hidden states, or on the last
        stage the mean cross-entropy when `labels` are given, else the logits of the real vocabulary. `layout`: the
        positions and attention mask of packed examples; with an `objective` set, it computes the loss from labels."""
        mask = None if layout is None else layout.attention_mask()
        if self.first:
            hidden = self.embed(inputs) if layout is None else self.embed(inputs, layout.positions)
        else:
            hidden = inputs
        hidden = self.run_blocks(hidden, mask)
        if not self.last:
            return hidden
        hidden = self.final_ln(hidden)
        if self.objective is not None and labels is not None:
            return self.objective(self, hidden, labels)
        if labels is None:
            return self.head.logits(hidden, self.head_weight())[..., : self.cfg.vocab_size]
        return self.head.loss(hidden, self.head_weight(), labels)


def build_gpt(cfg: ModelConfig, seed: int, device: torch.device | str = "cpu") -> GPTStage:
    """The whole model on one device, initialised layout-independently from `seed`."""
    from .init import materialize
    with torch.device("meta"):
        model = GPTStage(cfg, range(cfg.n_layers), first=True, last=True)
    return materialize(model, cfg, seed, device)
