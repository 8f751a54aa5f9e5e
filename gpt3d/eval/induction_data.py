"""The documented recipe for a tiny model that forms induction heads (used by the induction test and docs):
training documents made of a random token sequence repeated, so the only way to predict the repeats is to find the
earlier occurrence of the current token and copy the token after it (an induction head, Olsson et al. 2022).

    python -m gpt3d.eval.induction_data DIR           # writes DIR/repeats.{bin,idx} and DIR/induction.yaml
    gpt3d train DIR/induction.yaml --out RUN           # ~300 steps, a minute or two on a laptop CPU
    gpt3d eval RUN --induction --out RUN/eval          # layer x head heatmap; a layer-1 head scores > 0.3
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

VOCAB = 64
DOCUMENTS = 4000


def write_repeats(prefix: Path, seed: int = 0) -> None:
    """DOCUMENTS documents: a random sequence of 16..32 tokens (ids 1..VOCAB-1) written twice."""
    from gpt3d.data.indexed_dataset import IndexedDatasetWriter
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, vocab_size=VOCAB) as writer:
        for _ in range(DOCUMENTS):
            seq = rng.integers(1, VOCAB, size=int(rng.integers(16, 33)))
            writer.add_document(np.concatenate([seq, seq]).astype(np.int64))


def recipe(prefix: Path, steps: int = 300) -> str:
    """The run config (YAML) of the recipe: 2 layers, 4 heads of 16, context 64, lr 3e-3, batch 16."""
    return f"""preset: tiny-test
model: {{n_layers: 2, d_model: 128, n_heads: 4, seq_len: 64, vocab_size: {VOCAB}, vocab_pad_multiple: 64}}
data: {{datasets: [{{prefix: {prefix}}}]}}
optim: {{lr: 3.0e-3, warmup_steps: 20, weight_decay: 0.0}}
train: {{steps: {steps}, global_batch_size: 32, micro_batch_size: 32, seq_len: 64, threads: 1}}
checkpoint: {{save_interval: {steps}}}
"""


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    write_repeats(out / "repeats")
    (out / "induction.yaml").write_text(recipe(out / "repeats"))
    print(f"wrote {out / 'repeats'}.bin/.idx and {out / 'induction.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
