"""Calling the submit/status/cancel commands in-process, as `gpt3d submit ...` will (gpt3d/cli.py wires them)."""
from __future__ import annotations

import argparse
import contextlib
import io
import re
from dataclasses import dataclass

from gpt3d.slurm import cancel, status, submit


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def job_id(self) -> int:
        match = re.search(r"Submitted batch job (\d+)", self.out)
        assert match, f"no job id in output:\n{self.out}\n{self.err}"
        return int(match.group(1))


def _call(add, run, argv: list[str]) -> Result:
    parser = argparse.ArgumentParser()
    add(parser)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(parser.parse_args(argv))
    return Result(code, out.getvalue(), err.getvalue())


def gpt3d_submit(*argv: str) -> Result:
    return _call(submit.add_arguments, submit.run, list(argv))


def gpt3d_status(*argv: str) -> Result:
    return _call(status.add_status_arguments, status.run_status, list(argv))


def gpt3d_cancel(*argv: str) -> Result:
    return _call(cancel.add_cancel_arguments, cancel.run_cancel, list(argv))
