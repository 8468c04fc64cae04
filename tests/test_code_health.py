"""The code carries no dead weight: vulture finds no unused code in the product's packages at 80%
confidence (the level at which its findings are certain: unused imports, unreachable code, unused
arguments and locals)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_vulture_finds_no_dead_code_in_the_product():
    found = subprocess.run([sys.executable, "-m", "vulture", "pipeline", "stages", "--min-confidence", "80"],
                           cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 0 and not found.stdout, found.stdout + found.stderr
