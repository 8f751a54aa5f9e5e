"""`gpt3d profile tiny` in one process: per-layer entries, FLOPs against the analytical formulas, the step accounting,
and the files it writes."""
import csv
import re

import matplotlib.image
import pytest
import torch

from gpt3d.config import load_config
from gpt3d.profiler.cpu_peak import cpu_peak_tflops
from gpt3d.profiler.report import CSV_FIELDS

from .helpers import accounting_error, megatron_paper_flops, profile

LAYER_FIELDS = {"name", "kind", "layer", "stage", "forward_s", "backward_s", "recompute_s", "flops", "flops_rank",
                "tflops", "share", "activation_bytes", "param_bytes"}
BLOCK_KINDS = ["ln1", "qkv", "attn_core", "out_proj", "mlp", "residual_ln"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    rc, report = profile(out, "tiny", "--steps", "4", "--warmup", "1")
    assert rc == 0
    return out, report, load_config("tiny")


def test_one_entry_per_layer_with_every_field(run):
    _, report, cfg = run
    kinds = [e["kind"] for e in report["layers"]]
    assert kinds == ["embedding"] + BLOCK_KINDS * cfg.model.n_layers + ["final_ln", "head"]
    assert [e["layer"] for e in report["layers"][1:-2]] == [i for i in range(cfg.model.n_layers) for _ in BLOCK_KINDS]
    for e in report["layers"]:
        assert LAYER_FIELDS <= e.keys()
        assert e["forward_s"] > 0 and e["backward_s"] > 0 and e["recompute_s"] == 0
        assert e["stage"] == 0
    params = {e["kind"]: e["param_bytes"] for e in report["layers"]}
    d, a, f = cfg.model.d_model, cfg.model.attn_width, cfg.model.d_ff
    assert params["qkv"] == 4 * (d * 3 * a + 3 * a) and params["mlp"] == 4 * (d * f + f + f * d + d)
    assert params["head"] == 0  # tied to the embedding on the same stage
    mb, s = cfg.train.micro_batch_size, cfg.train.seq_len
    acts = {e["kind"]: e["activation_bytes"] for e in report["layers"]}
    assert acts["mlp"] >= 4 * mb * s * 2 * f  # fc1 output and GELU output (fp32) are kept for backward


def test_flops_match_hand_counted_gemms_and_megatrons_formula(run):
    """Expected FLOPs are counted here from the GEMM shapes of `tiny` (d 128, 4 heads, d_ff 512, padded vocab 4096,
    4 layers), not with the functions the profiler uses."""
    _, report, cfg = run
    G, s = cfg.train.global_batch_size, cfg.train.seq_len
    d, f, vocab, layers = 128, 512, 4096, 4
    assert (cfg.model.d_model, cfg.model.d_ff, cfg.model.padded_vocab_size, cfg.model.n_layers) == (d, f, vocab, layers)
    tokens = G * s
    forward = {"embedding": 0, "ln1": 0, "residual_ln": 0, "final_ln": 0,
               "qkv": 2 * tokens * d * 3 * d,                  # x @ W_qkv
               "attn_core": 2 * 2 * G * s * s * d,             # q k^T and p v over the full s x s square
               "out_proj": 2 * tokens * d * d,
               "mlp": 2 * tokens * d * f + 2 * tokens * f * d,  # fc1 + fc2
               "head": 2 * tokens * d * vocab}
    for e in report["layers"]:
        assert e["flops"] == 3 * forward[e["kind"]], e["name"]  # forward + backward (2 x forward)
        assert e["flops_rank"] == e["flops"]  # one rank does it all
    assert sum(e["flops"] for e in report["layers"]) == pytest.approx(megatron_paper_flops(G, s, layers, d, vocab),
                                                                      rel=1e-12)


def test_layer_times_add_up_to_the_step(run):
    """The per-layer clocks and the step clock are separate measurements: the layers must account for the step up to
    15% (one process: no communication, no bubble), and what is left ("other" = the remainder) is small and not
    negative; a layer timed twice or a missed one breaks this."""
    _, report, _ = run
    (rank,) = report["ranks"]
    assert accounting_error(rank) <= 0.15, rank
    layers = sum(e["forward_s"] + e["backward_s"] for e in report["layers"])
    assert layers == pytest.approx(rank["layers_s"], rel=1e-9)
    assert -0.01 * rank["step_s"] <= rank["other_s"] <= 0.15 * rank["step_s"], rank
    assert 0 < rank["optimizer_s"] < 0.5 * rank["step_s"], rank


def test_step_metrics(run):
    _, report, cfg = run
    step = report["step"]
    G, s = cfg.train.global_batch_size, cfg.train.seq_len
    assert step["tokens_per_s"] == pytest.approx(G * s / step["step_s"])
    flops = megatron_paper_flops(G, s, 4, 128, 4096)  # tiny: 4 layers, d 128, padded vocabulary 4096
    assert step["model_tflops_per_rank"] == pytest.approx(flops / step["step_s"] / 1e12)
    # MFU on CPU is against the hardware peak of the cores used (never a measured GEMM): cores x clock x FLOPs/cycle
    # (the clock may be measured, differently in each process: compare the formula, and the rest of the source)
    _, source = cpu_peak_tflops(torch.float32, report["ranks"][0]["threads"])
    cores, ghz, per_cycle = re.fullmatch(r"hardware peak (\d+) cores x ([\d.]+) GHz \(.*\) x (\d+) float32 FLOP/cycle .*",
                                         step["peak_source"]).groups()
    assert step["peak_tflops"] == pytest.approx(int(cores) * float(ghz) * int(per_cycle) / 1000, rel=0.01)
    def any_clock(text):
        return re.sub(r"x [\d.]+ GHz", "x ? GHz", text)
    assert any_clock(step["peak_source"]) == any_clock(source)
    assert step["mfu"] == pytest.approx(step["model_tflops_per_rank"] / step["peak_tflops"])
    assert step["peak_memory_max_bytes"] > 100 * 2 ** 20  # at least the Python + torch process
    assert report["stages"][0]["theoretical_bubble_fraction"] == 0.0


def test_files_are_well_formed(run):
    out, report, _ = run
    with (out / "profile.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == CSV_FIELDS
    assert [r["name"] for r in rows] == [e["name"] for e in report["layers"]]
    assert float(rows[3]["forward_s"]) == pytest.approx(report["layers"][3]["forward_s"])
    image = matplotlib.image.imread(out / "profile.png")
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 600
    assert report["files"] == {"json": "profile.json", "csv": "profile.csv", "png": "profile.png"}


def test_selective_recompute_time_is_reported(tmp_path):
    rc, report = profile(tmp_path, "tiny-test", "--steps", "3", "--warmup", "1", "--set", "parallel.recompute=selective")
    assert rc == 0
    for e in report["layers"]:
        if e["kind"] == "attn_core":
            assert e["recompute_s"] > 0 and e["recompute_flops"] == e["flops"] / 3
        else:
            assert e["recompute_s"] == 0 and e["recompute_flops"] == 0
