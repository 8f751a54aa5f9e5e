"""The kernels layer sits below the model: importing every kernel module must not import gpt3d.model."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_kernels_do_not_import_the_model():
    code = ("import sys, gpt3d.kernels, gpt3d.kernels.sparse_attention; "
            "print(sorted(m for m in sys.modules if m.startswith('gpt3d.model')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout
