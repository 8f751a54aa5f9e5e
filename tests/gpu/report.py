"""The GPU check's table and JSON report, from the records of the tests and benchmarks (JSON lines) and pytest's JUnit
XML. Called by run.sh:

    python -m tests.gpu.report RECORDS.jsonl JUNIT.xml [--json OUT/gpu_report.json] [--meta KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import datetime
import json
import xml.etree.ElementTree as ET
from pathlib import Path


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_junit(path: Path) -> list[dict]:
    """[{test, outcome (passed|failed|error|skipped), message}] from pytest's --junitxml file."""
    if not path.exists():
        return []
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
        tests.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                      "message": message})
    return tests


def fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def speedup(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(records: list[dict], tests: list[dict]) -> str:
    lines = []
    counts = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    lines.append("tests: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none ran"))
    lines += [f"  {t['outcome'].upper():7s} {t['test']}  {t['message']}" for t in tests if t["outcome"] != "passed"]
    parity = [r for r in records if r["kind"] == "parity"]
    if parity:
        lines.append("\nparity vs float64 (max |err| / max |truth|)      dtype     gpt3d     PyTorch ref  tolerance")
        for r in parity:
            lines.append(f"  {r['op'] + ' ' + r['tensor']:46s} {r['dtype']:9s} {fmt(r['err']):9s} "
                         f"{fmt(r['eager_err']):12s} {fmt(r['tol'])}")
    for r in (r for r in records if r["kind"] == "train"):
        lines.append("\ntraining: " + r["run"])
        lines.append("  " + ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in r.items()
                                      if k not in ("kind", "run")))
    bench = [r for r in records if r["kind"] == "bench"]
    if bench:
        lines.append("\nbenchmark                                                   impl                          "
                     "ms        rate             gpt3d speed-up")
        for r in bench:
            rate = f"{r['rate']:.1f} {r['unit']}"
            if r.get("pct_of_copy_bw") is not None:
                rate += f" ({r['pct_of_copy_bw']:.0f}% copy)"
            lines.append(f"  {r['bench'][:58]:58s} {r['impl'][:29]:29s} {r['ms']:9.3f} {rate:24s} "
                         f"{speedup(r['speedup_of_gpt3d'])}")
    for r in (r for r in records if r["kind"] == "bench_note"):
        lines.append(f"  {r['bench'][:40]}: layout density {r['density']:.3f}; issue target: >= "
                     f"{r['flash_target_speedup']:.2f}x flash")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path)
    parser.add_argument("junit", type=Path)
    parser.add_argument("--json", type=Path, help="write the whole report here")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="extra report fields")
    args = parser.parse_args()
    records, tests = read_records(args.records), read_junit(args.junit)
    print(table(records, tests))
    if args.json:
        meta = dict(item.split("=", 1) for item in args.meta)
        report = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **meta,
                  "tests": tests, "records": records}
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
