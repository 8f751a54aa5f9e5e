"""Overhead of `gpt3d profile`'s instrumentation: training step time with and without the profiler, same process,
same model, steps interleaved (plain, profiled, profiled, plain, ...) so drift in machine load hits both alike.
Reports the median of each and their ratio; target: profiled / plain - 1 <= 10%.

    python benchmarks/profiler_overhead.py                 # tiny preset, 16 steps of each
    python benchmarks/profiler_overhead.py --pairs 6 --config tiny-test --set model.n_layers=2
"""
from __future__ import annotations

import argparse
import statistics

from gpt3d.config import load_config
from gpt3d.profiler.step import TrainerProfiler
from gpt3d.train.loop import build_data, global_batch
from gpt3d.train.runtime import init_runtime
from gpt3d.train.trainer import Trainer

TARGET = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--pairs", type=int, default=16, help="plain/profiled step pairs measured")
    parser.add_argument("--warmup", type=int, default=2, help="pairs run first and discarded")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    steps = 2 * (args.pairs + args.warmup)
    cfg = load_config(args.config, [*args.overrides, f"train.steps={steps}", "train.eval_interval=0",
                                    f"train.threads={args.threads}", "train.tensorboard=false",
                                    "train.progress=false"])
    rt = init_runtime(cfg, 0, 1, 0, 1)
    data = build_data(cfg)
    trainer = Trainer(cfg, rt)
    profiler = TrainerProfiler(trainer)
    G = cfg.train.global_batch_size
    plain, profiled, ratios = [], [], []
    step = 0
    for pair in range(args.pairs + args.warmup):
        times = {}
        order = ("plain", "profiled") if pair % 2 == 0 else ("profiled", "plain")
        for kind in order:
            batch = global_batch(data["train"], step, G)
            step += 1
            if kind == "plain":
                times[kind] = trainer.train_step(batch).seconds
            else:
                times[kind] = profiler.profile_step(batch)[0].seconds
        if pair >= args.warmup:
            plain.append(times["plain"])
            profiled.append(times["profiled"])
            ratios.append(times["profiled"] / times["plain"])

    m_plain, m_prof = statistics.median(plain), statistics.median(profiled)
    overhead = m_prof / m_plain - 1
    pair_overhead = statistics.median(ratios) - 1
    print(f"config {args.config} (layers {cfg.model.n_layers}, d_model {cfg.model.d_model}, seq {cfg.train.seq_len}, "
          f"{rt.num_micro} micro-batches of {cfg.train.micro_batch_size}), {args.threads} thread(s), "
          f"{args.pairs} interleaved pairs")
    print(f"  step without profiler: median {m_plain * 1e3:9.2f} ms  (min {min(plain) * 1e3:.2f}, "
          f"max {max(plain) * 1e3:.2f})")
    print(f"  step with profiler:    median {m_prof * 1e3:9.2f} ms  (min {min(profiled) * 1e3:.2f}, "
          f"max {max(profiled) * 1e3:.2f})")
    print(f"  overhead (ratio of medians):      {overhead:+.1%}")
    print(f"  overhead (median of pair ratios): {pair_overhead:+.1%}")
    print(f"  target <= {TARGET:.0%}: {'met' if overhead <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
