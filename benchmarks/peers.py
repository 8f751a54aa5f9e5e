"""gpt3d side by side with the frameworks its users would otherwise pick, each running its own engine on the same GPT,
the same initial weights (gpt3d's layout-independent init, converted by gpt3d.interop), the same global batch and data,
fp32 and bf16, on 2 ranks:

    layout dp2: gpt3d | Hugging Face GPT-2 + torch DDP (fused AdamW, SDPA) | DeepSpeed ZeRO-1 (HF GPT-2)
    layout tp2: gpt3d | megatron-core GPTModel + its DDP, optimizer and schedule
    layout pp2: gpt3d | megatron-core (1F1B) | DeepSpeed PipelineModule (HF GPT-2 blocks)

Everything else is equal: AdamW (lr 1e-3, betas 0.9/0.95, eps 1e-8, no weight decay, no clipping, constant lr), no
dropout, untied output head, GELU tanh, one thread per rank, freed memory kept in each rank's heap (gpt3d/heap.py's
malloc settings, applied to every framework's ranks alike); global batch 4 (micro-batches of 2 at dp2/tp2, of 1 at
pp2: 4 micro-batches in flight). Printed per run: tokens/s (global batch tokens / median step time, the first step
excluded), peak RSS per rank, the loss of the last step, and gpt3d's speed over the peer. Losses must agree with
gpt3d's within LOSS_TOLERANCE (relative): a run outside it is marked DIFFERS. With --repeat N each layout's frameworks
run N times in turn (gpt3d, peer, gpt3d, peer, ...): step times are the medians (range in brackets after the ratio),
ratios are of medians.

    python benchmarks/peers.py                   # 6 layers, d512, 8 heads, seq 512, vocab 8192, 6 steps
    python benchmarks/peers.py --quick           # 2 layers, d128, seq 128, vocab 1024, 3 steps (smoke run)
    python benchmarks/peers.py --only dp2 --dtypes fp32
    python benchmarks/peers.py --repeat 3          # alternating runs, medians: for a machine others share
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# Relative agreement of the last step's loss with gpt3d's. fp32: only summation order differs (TP splits, fused vs
# unfused kernels). bf16: each framework rounds in different places (autocast vs bf16 weights + fp32 master).
LOSS_TOLERANCE = {"fp32": 2e-3, "bf16": 3e-2}
RUNS = {"dp2": ("gpt3d", "hf_ddp", "deepspeed"), "tp2": ("gpt3d", "megatron"), "pp2": ("gpt3d", "megatron", "deepspeed")}
MODULES = {"gpt3d": "gpt3d_run", "hf_ddp": "hf_ddp_run", "deepspeed": "deepspeed_run", "megatron": "megatron_run"}
# Pairs a peer cannot run on a CPU-only torch, with the reason printed in their row.
UNSUPPORTED = {("megatron", "bf16"): "not runnable on CPU: megatron-core's bf16 optimizer "
                                     "(Float16OptimizerWithFloat16Params) accepts only torch.cuda tensors"}


def pipeline_settings(layers: int) -> tuple[dict, int | None]:
    """Each framework's best pipeline layout on the 6-layer model (the untied head costs about 1.3 blocks), measured
    in docs/benchmarks.md. gpt3d: its zero-bubble V schedule (zbv: rank 0 runs virtual stages 0 and 3, rank 1 stages 1
    and 2) with the split 2,2,1,1 (rank 0: embedding, layers 0-1, layer 5 and the head; rank 1: layers 2-4), the
    fastest of the splits tried. megatron-core: 1F1B with 4 | 2 layers (its num_layers_in_first_pipeline_stage),
    faster than its 3 | 3; it has no zero-bubble schedule. DeepSpeed: 1F1B; its partition methods (uniform,
    parameters, type:) all cut 3 | 3 here. Other depths (--quick) run every framework's default."""
    if layers != 6:
        return {}, None
    return {"pp2": ["parallel.schedule=zbv", "parallel.pipeline_split=[2,2,1,1]"]}, 4


NAMES = {"gpt3d": "gpt3d", "hf_ddp": "HF + torch DDP", "deepspeed": "DeepSpeed", "megatron": "megatron-core"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, job: dict) -> None:
    from peer_runs import common
    common.setup_rank(rank, job)
    module = importlib.import_module(f"peer_runs.{MODULES[job['framework']]}")
    losses, seconds = module.train(rank, job)
    common.write_result(rank, job, losses, seconds)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def run(job: dict) -> dict:
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.multiprocessing.spawn(worker, args=(job,), nprocs=job["world"], join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(job["world"])]
    seconds = [max(r["seconds"][i] for r in ranks) for i in range(len(ranks[0]["seconds"]))]
    gemm_s = None
    if job.get("profile"):
        seconds = seconds[:-1]  # the profiled step
        gemm_s = max(json.loads((out / f"gemm-rank{r}.json").read_text())["linear_gemm_s"]
                     for r in range(job["world"]))
    return {"loss": ranks[0]["losses"][-1], "losses": ranks[0]["losses"],
            "step_s": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
            "peak_rss": [r["peak_rss"] for r in ranks], "linear_gemm_s": gemm_s}


def prepare(work: Path, spec: dict, steps: int, global_batch: int) -> tuple[str, str]:
    """gpt3d's initial full state dict (what its Trainer builds from train.seed) and the token batches."""
    from peer_runs import common
    from gpt3d.model.gpt import build_gpt
    cfg = common.model_config({"spec": spec})
    model = build_gpt(cfg, seed=common.SEED)
    weights = str(work / "initial.pt")
    torch.save({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, weights)
    tokens = str(work / "tokens.npy")
    rng = np.random.default_rng(0)
    np.save(tokens, rng.integers(0, spec["vocab"], size=(steps, global_batch, spec["seq"] + 1)).astype(np.int64))
    return weights, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small model and 3 steps (smoke run)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--only", nargs="*", choices=sorted(RUNS), default=sorted(RUNS), help="layouts to run")
    p.add_argument("--dtypes", nargs="*", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--frameworks", nargs="*", choices=sorted(MODULES), default=sorted(MODULES))
    p.add_argument("--threads", type=int, default=1, help="threads per rank (2 ranks)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each layout's frameworks this many times, alternating (gpt3d, peer, ..., gpt3d, peer, "
                        "...), and report each framework's median step time with its range: on a shared machine a "
                        "burst of load then hits both sides of a ratio alike")
    p.add_argument("--gpt3d-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra gpt3d config overrides for every layout (to compare one setting against the peers)")
    p.add_argument("--profile", action="store_true",
                   help="profile the last step of every run (torch.profiler, CPU ops by self time, then by op and "
                        "input shape); the tables are written to <run dir>/profile-rank<r>.txt (excluded from the "
                        "step times: the last step). Each row then also shows the slowest rank's time in the linear "
                        "layers' and head's GEMMs in that step (gpt3d/profiler/gemm_floor.py), and each peer's row "
                        "its step time over gpt3d's GEMM time: gpt3d's ceiling over it were all else free")
    args = p.parse_args()
    spec = ({"layers": 2, "d_model": 128, "heads": 4, "seq": 128, "vocab": 1024} if args.quick else
            {"layers": 6, "d_model": 512, "heads": 8, "seq": 512, "vocab": 8192})
    steps = args.steps or (3 if args.quick else 6)
    global_batch = 4
    gpt3d_settings, megatron_first = pipeline_settings(spec["layers"])
    gpt3d_settings = {layout: gpt3d_settings.get(layout, []) + args.gpt3d_set for layout in RUNS}
    work = Path(tempfile.mkdtemp(prefix="gpt3d-peers-"))
    weights, tokens = prepare(work, spec, steps, global_batch)
    print(f"model {spec}; global batch {global_batch}; {steps} steps; 2 ranks x {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    header = f"{'layout':6} {'dtype':5} {'framework':15} {'step s':>7} {'tokens/s':>9} {'peak RSS/rank':>16} " \
             f"{'last loss':>10}  gpt3d speed / peer"
    print(header)
    for layout in args.only:
        for dtype in args.dtypes:
            frameworks = []
            for framework in RUNS[layout]:
                if framework not in args.frameworks and framework != "gpt3d":
                    continue
                if (framework, dtype) in UNSUPPORTED:
                    print(f"{layout:6} {dtype:5} {NAMES[framework]:15} {UNSUPPORTED[framework, dtype]}", flush=True)
                    continue
                frameworks.append(framework)
            runs = {framework: [] for framework in frameworks}
            for repeat in range(args.repeat):
                for framework in frameworks:
                    job = {"framework": framework, "layout": layout, "dtype": dtype, "spec": spec, "steps": steps,
                           "global_batch": global_batch, "micro_batch": 1 if layout == "pp2" else 2, "world": 2,
                           "threads": args.threads, "lr": 1e-3, "port": free_port(), "weights": weights,
                           "tokens": tokens, "out": str(work / f"{layout}-{dtype}-{framework}-{repeat}"),
                           "profile": args.profile, "gpt3d_overrides": gpt3d_settings,
                           "megatron_first_stage_layers": megatron_first}
                    runs[framework].append(run(job))
            ours = statistics.median(r["step_s"] for r in runs["gpt3d"])
            our_gemm_s = statistics.median(r["linear_gemm_s"] for r in runs["gpt3d"]) if args.profile else None
            for framework in frameworks:
                r, times = runs[framework][0], [x["step_s"] for x in runs[framework]]
                step_s = statistics.median(times)
                spread = f" ({min(times):.2f}-{max(times):.2f})" if len(times) > 1 else ""
                reference = runs["gpt3d"][0]["loss"]
                agree = all(abs(x["loss"] - reference) <= LOSS_TOLERANCE[dtype] * abs(reference)
                            for x in runs[framework])
                rss = "/".join(f"{max(x['peak_rss'][i] for x in runs[framework]) / 2**20:.0f}"
                               for i in range(len(r["peak_rss"]))) + " MB"
                ratio = "" if framework == "gpt3d" else f"{step_s / ours:.2f}x"
                if args.profile:  # gpt3d/profiler/gemm_floor.py: the slowest rank's linear GEMMs, profiled step
                    gemm_s = statistics.median(x["linear_gemm_s"] for x in runs[framework])
                    ceiling = "" if framework == "gpt3d" else f", ceiling {step_s / our_gemm_s:.2f}x"
                    spread += f"  [linear GEMMs {gemm_s:.3f} s{ceiling}]"
                print(f"{layout:6} {dtype:5} {NAMES[framework]:15} {step_s:7.2f} "
                      f"{global_batch * spec['seq'] / step_s:9.0f} {rss:>16} {r['loss']:10.4f}  {ratio}{spread}"
                      f"{'' if agree else '  DIFFERS (losses ' + str([round(x, 4) for x in r['losses']]) + ')'}",
                      flush=True)
    print(f"loss tolerance (relative to gpt3d's last loss): {LOSS_TOLERANCE}")
    if args.profile:
        print(f"profiles: {work}/<layout>-<dtype>-<framework>-<repeat>/profile-rank<r>.txt")


if __name__ == "__main__":
    main()
