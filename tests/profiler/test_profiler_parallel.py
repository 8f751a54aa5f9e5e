"""`gpt3d profile` spawning gloo ranks: pipeline stages report their own layers, the step accounting holds per rank,
tensor-parallel collectives are timed, and full recomputation reports recompute time."""
import pytest

from gpt3d.config import load_config
from gpt3d.profiler.report import theoretical_bubble

from .helpers import accounting_error, megatron_paper_flops, profile


def test_pipeline_two_stages(tmp_path):
    rc, report = profile(tmp_path, "tiny", "--pp", "2", "--steps", "4", "--warmup", "1")
    assert rc == 0
    cfg = load_config("tiny")
    by_stage = {s: [e["name"] for e in report["layers"] if e["stage"] == s] for s in (0, 1)}
    assert by_stage[0][0] == "embedding" and {e.split(".")[0] for e in by_stage[0][1:]} == {"layer0", "layer1"}
    assert by_stage[1][-2:] == ["final_ln", "head"] and {e.split(".")[0] for e in by_stage[1][:-2]} == {"layer2",
                                                                                                          "layer3"}
    head = report["layers"][-1]
    assert head["param_bytes"] == 4 * cfg.model.padded_vocab_size * cfg.model.d_model  # the tied copy
    for rank in report["ranks"]:
        assert accounting_error(rank) <= 0.15, rank
    for stage in report["stages"]:
        assert stage["theoretical_bubble_fraction"] == pytest.approx(1 / 5)  # p=2, m=4
        assert 0 < stage["bubble_fraction"] < 1
    assert report["communication"]["pp"]["mean"]["total_bytes"] > 0
    assert report["communication"]["pp"]["mean"]["time_s"] > 0
    assert report["communication"]["embedding"]["mean"]["total_bytes"] == 4 * cfg.model.padded_vocab_size * \
        cfg.model.d_model  # tied embedding gradient, summed across the two ends
    lanes = {lane["rank"]: lane["events"] for lane in report["timeline"]}
    assert sorted(lanes) == [0, 1]
    for events in lanes.values():  # 4 forwards and 4 backwards per stage, in the 1F1B order
        assert sorted(kind for kind, *_ in events) == ["B"] * 4 + ["F"] * 4
    assert (tmp_path / "profile.png").stat().st_size > 0
    # Per-stage schedule costs for `gpt3d schedule --costs`: the mean F of the timeline; B measured unsplit (1F1B).
    forwards = [end - start for events in lanes.values() for kind, _, _, start, end in events if kind == "F"]
    costs = report["schedule_costs"]
    assert costs["forward_s"] == pytest.approx(sum(forwards) / len(forwards))
    assert costs["weight_split_measured"] is False and costs["backward_input_s"] == costs["backward_weight_s"] > 0
    from gpt3d.cli import main
    assert main(["schedule", "--kind", "zbh1", "--pp", "2", "-m", "4", "--costs", str(tmp_path / "profile.json"),
                 "--out", str(tmp_path / "gantt")]) == 0
    assert (tmp_path / "gantt" / "schedule-zbh1.png").stat().st_size > 0


def test_tensor_and_pipeline_parallel_with_full_recompute(tmp_path):
    rc, report = profile(tmp_path, "tiny-test", "--tp", "2", "--pp", "2", "--steps", "3", "--warmup", "1",
                         "--set", "parallel.recompute=full")
    assert rc == 0
    cfg = load_config("tiny-test")
    assert len(report["ranks"]) == 4
    stage_layers = {s["stage"]: s["layers"] for s in report["stages"]}
    assert stage_layers == {0: [0, 1], 1: [2, 3]}
    G, s = cfg.train.global_batch_size, cfg.train.seq_len
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.padded_vocab_size) == (4, 64, 512)
    assert sum(e["flops"] for e in report["layers"]) == pytest.approx(megatron_paper_flops(G, s, 4, 64, 512),
                                                                      rel=1e-12)
    for e in report["layers"]:
        assert e["flops_rank"] * 2 == pytest.approx(e["flops"] * (4 / 3 if e["layer"] is not None else 1))
        if e["layer"] is not None:
            assert e["recompute_s"] > 0, e["name"]  # the whole block is re-run in backward
        else:
            assert e["recompute_s"] == 0, e["name"]
    tp = report["communication"]["tp"]
    assert tp["mean"]["total_bytes"] > 0 and tp["mean"]["inside_layers_s"] > 0
    assert tp["mean"]["inside_layers_s"] == pytest.approx(tp["mean"]["time_s"])
    assert theoretical_bubble(2, 4, 1) == report["stages"][0]["theoretical_bubble_fraction"]
