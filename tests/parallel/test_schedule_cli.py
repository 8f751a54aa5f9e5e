"""`gpt3d schedule`: prints what the simulator computes, draws one Gantt chart per schedule, and refuses a layout a
schedule cannot run with one clear error (exit 2) before drawing anything."""
from __future__ import annotations

from gpt3d.cli import main
from gpt3d.parallel.pipeline.schedules import build_schedule
from gpt3d.parallel.pipeline.simulator import Costs, simulate


def test_zbv_gantt_bubble_and_memory(tmp_path, capsys):
    assert main(["schedule", "--kind", "zbv", "--pp", "4", "--micro-batches", "8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    sim = simulate(build_schedule("zbv", 4, 8, 2), Costs.per_stage(1, 1, 1, 2))
    row = next(line for line in out.splitlines() if line.startswith("zbv "))
    assert f"{sim.bubble:.1%}" in row and f"{sim.makespan:.4g}" in row
    assert (tmp_path / "schedule-zbv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_schedules_compare_with_1f1b(tmp_path, capsys):
    assert main(["schedule", "--pp", "4", "-m", "8", "--backward-input", "1.3", "--backward-weight", "0.8"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:7]}
    assert sorted(rows) == sorted(["gpipe", "1f1b", "interleaved", "zbh1", "zbv"])
    assert rows["1f1b"][3] == "1.00x"
    assert float(rows["zbv"][3].rstrip("x")) < float(rows["zbh1"][3].rstrip("x")) < 1


def test_bad_layout_is_one_clear_error(tmp_path, capsys):
    assert main(["schedule", "--kind", "zbv", "--pp", "4", "-m", "3", "--out", str(tmp_path / "x")]) == 2
    assert "gpt3d schedule: schedule zbv needs at least pp=4 micro-batches, got 3" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["schedule", "--pp", "2", "-m", "4", "--costs", str(tmp_path / "missing.json")]) == 2
    assert "--costs: " in capsys.readouterr().err
