"""The CI gate on a kernel set the committed baseline never saw: ``ATEN_CPU_CAPABILITY=avx2`` alone
(oneDNN keeps its native kernels) is none of ``make baseline``'s spread runs, so the students and
the deployed models trained and calibrated under it test the measured tolerances instead of
restating them. The teacher is the shared smoke run's (its own spread is ``make baseline``'s to
measure): a teacher is most of a smoke run's time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
BASELINE = str(ROOT / "tests" / "baselines" / "smoke.json")


def test_the_smoke_run_on_a_held_out_kernel_set_passes_the_committed_baseline(tmp_path, smoke_reference):
    out = tmp_path / "avx2"
    shutil.copytree(smoke_reference / "train_teacher", out / "train_teacher", copy_function=os.link)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", SMOKE, "--out", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"]["train_teacher"]["status"] == "skipped"
    assert metrics["stages"]["distill_student"]["status"] == "ran"
    written = json.loads(Path(BASELINE).read_text())["fingerprints"]
    run = metrics["run"]
    if written.get("framework") != run["framework_fingerprint"]:
        pytest.skip("the committed baseline was written with another torch release")
    result = subprocess.run([sys.executable, "-m", "pipeline", "gate", str(out), "--baseline", BASELINE],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    if run["hardware_fingerprint"] != written["hardware"]:
        assert "hardware fingerprint differs" in result.stdout  # a warning naming both kernel sets
