"""Shared helpers of the interop tests: gpt3d models are built with the PyTorch reference kernels so the parity
checks compare the math, not whether the C++ extension was built."""
from __future__ import annotations

import os
import socket

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gpt3d_model(cfg, sd):
    """A fresh gpt3d model (random init, then every weight replaced by `sd`, strictly) in eval mode."""
    from gpt3d.model.gpt import build_gpt
    model = build_gpt(cfg, seed=123)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def tokens(vocab: int, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
