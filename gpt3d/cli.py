"""The `gpt3d` command: one subcommand per user task, each defined next to the code it drives."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


def _commands() -> dict[str, tuple[str, Callable, Callable]]:
    """name -> (help, add_arguments, run); modules are imported lazily so `gpt3d --help` stays fast."""
    def lazy(module: str, add: str = "add_arguments", run: str = "run"):
        def adder(parser):
            import importlib
            getattr(importlib.import_module(module), add)(parser)

        def runner(args):
            import importlib
            return getattr(importlib.import_module(module), run)(args)
        return adder, runner

    return {
        "train": ("train a model (spawns local ranks for --tp/--pp/--dp, or joins a torchrun/srun/mpirun job)",
                  *lazy("gpt3d.train.command")),
        "finetune": ("fine-tune from a checkpoint: SFT, GPT-1 classification, reward model or DPO (every train flag)",
                     *lazy("gpt3d.finetune.command")),
        "align": ("PPO-ptx from an SFT policy against a reward model (InstructGPT; every train flag)",
                  *lazy("gpt3d.align.command")),
        "preprocess": ("tokenise text/JSONL into a Megatron-format indexed dataset (PREFIX.bin + PREFIX.idx)",
                       *lazy("gpt3d.data.preprocess")),
        "plan": ("predict throughput and memory of layouts for a GPU cluster and rank them", *lazy("gpt3d.planner.cli")),
        "dryrun": ("run one rank of a full-size job under fake tensors: peak memory per category vs GPU and planner",
                   *lazy("gpt3d.dryrun.cli")),
        "submit": ("render and submit a SLURM batch job", *lazy("gpt3d.slurm.submit")),
        "status": ("show SLURM jobs (squeue / scontrol)", *lazy("gpt3d.slurm.status", "add_status_arguments",
                                                              "run_status")),
        "cancel": ("cancel a SLURM job (scancel)", *lazy("gpt3d.slurm.cancel", "add_cancel_arguments", "run_cancel")),
        "convert": ("convert a checkpoint to another parallel layout, or to/from Hugging Face, Megatron-LM, DeepSpeed",
                    *lazy("gpt3d.checkpoint.convert")),
        "inspect": ("show a checkpoint's layout, step, config and tensors, and verify its checksums",
                    *lazy("gpt3d.checkpoint.inspect")),
        "profile": ("profile time, FLOPs, MFU and memory per layer, stage and communication group",
                    *lazy("gpt3d.profiler.cli")),
        "schedule": ("simulate pipeline schedules (gpipe, 1f1b, interleaved, zbh1, zbv): bubble, memory, Gantt chart",
                     *lazy("gpt3d.parallel.pipeline.command")),
        "generate": ("complete prompts with a checkpoint (KV cache, any tp x pp layout, JSONL in and out)",
                     *lazy("gpt3d.inference.command")),
        "eval": ("few-shot evaluation (GPT-3 protocol), lm-eval tasks, ICL score and induction heads of a checkpoint",
                 *lazy("gpt3d.eval.command")),
        "presets": ("list the model presets with their parameter counts", *lazy("gpt3d.config.show")),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt3d", description="GPT-3-class training with 3D parallelism")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add, run) in _commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
