"""`gpt3d presets`: the preset table (docs/configs.md's table is generated from the same data)."""
from __future__ import annotations

import argparse

from .presets import PRESETS, paper_parameter_count
from .run import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")


def rows() -> list[list[str]]:
    out = []
    for name in PRESETS:
        cfg = load_config(None, [f"preset={name}"])
        m = cfg.model
        paper = paper_parameter_count(name)
        count = m.num_parameters()
        out.append([name, str(m.n_layers), str(m.d_model), str(m.n_heads), str(m.d_head), str(m.seq_len),
                    f"{count / 1e6:,.1f}M", f"{paper / 1e6:,.0f}M" if paper else "-",
                    f"{(count / paper - 1) * 100:+.1f}%" if paper else "-",
                    str(cfg.train.global_batch_size), f"{cfg.optim.lr:g}"])
    return out


HEADER = ["preset", "layers", "d_model", "heads", "d_head", "context", "parameters", "paper", "diff", "batch", "lr"]


def run(args: argparse.Namespace) -> int:
    table = rows()
    if args.markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for row in table:
            print("| " + " | ".join(row) + " |")
        return 0
    from rich.console import Console
    from rich.table import Table
    t = Table(title="gpt3d presets")
    for h in HEADER:
        t.add_column(h)
    for row in table:
        t.add_row(*row)
    Console().print(t)
    return 0
