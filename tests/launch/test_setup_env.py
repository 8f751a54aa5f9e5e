"""launchers/setup_env.sh from a bare shell (no virtual environment active, a minimal PATH): it creates .venv
(--system-site-packages: the machine's torch is reused, the base Python is never written to, as PEP 668 requires) and
installs gpt3d there, so the README's `.venv/bin/gpt3d` works; a second run reuses it. The C++ build is skipped
(GPT3D_NO_EXT=1) to keep this quick; CI's own run of tests/run_all.sh builds it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bare_shell(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    base = Path(getattr(sys, "_base_executable", sys.executable))
    env = {"PATH": f"{base.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "GPT3D_NO_EXT": "1",
           "GPT3D_PYTHON": str(base), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_setup_creates_and_uses_dot_venv_from_a_bare_shell(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "launchers", repo / "launchers")
    shutil.copytree(REPO / "gpt3d", repo / "gpt3d", ignore=shutil.ignore_patterns("__pycache__", "*.so"))

    first = bare_shell("bash launchers/setup_env.sh", repo)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "setup: creating .venv from" in first.stdout and (repo / ".venv" / "pyvenv.cfg").is_file()
    assert "include-system-site-packages = true" in (repo / ".venv" / "pyvenv.cfg").read_text()

    where = bare_shell(".venv/bin/python -c 'import sys, gpt3d; print(gpt3d.__file__); print(sys.prefix)'", repo)
    assert where.returncode == 0, where.stderr
    module, prefix = where.stdout.split()
    assert module == str(repo / "gpt3d" / "__init__.py") and prefix == str(repo / ".venv")

    cli = bare_shell(".venv/bin/gpt3d --help", repo)
    assert cli.returncode == 0 and "train" in cli.stdout, cli.stderr[-2000:]

    again = bare_shell("bash launchers/setup_env.sh", repo)
    assert again.returncode == 0 and "creating .venv" not in again.stdout, again.stderr[-2000:]
