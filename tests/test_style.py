"""One style everywhere: ``ruff format --check`` and ``ruff check`` over the code (the README's
test command runs them, so CI does). ruff is pinned in the ``test`` extra: another version may
format differently."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ["src", "tests", "benchmarks", "tools"]


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff_is_clean(command):
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *TREES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (
        f"ruff {' '.join(command)} found problems:\n{proc.stdout}{proc.stderr}"
    )
