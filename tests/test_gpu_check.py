"""`make gpu-check` is ready for a GPU machine: its command runs end to end (on CPU, tiny sizes)
and writes one table with every part's status and figures; a failing part is a row, not a crash."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_options_are_the_ones_gpu_users_turn_on(tmp_path):
    command = gpu_check.smoke_command(tmp_path, "cuda", quick=False)
    assert {"run.device=cuda", "run.amp=bf16", "run.channels_last=true", "run.compile=true"} <= set(command)
    training = gpu_check.training_command(tmp_path, "cuda", quick=False)
    assert "--allow-cpu" not in training and "--size" not in training  # the paper's crop 513, N = 16641


def test_the_quick_check_runs_on_cpu_and_writes_one_table(tmp_path):
    result, markdown = gpu_check.gpu_check(tmp_path, "cpu", quick=True, timeout=600)
    assert [part["status"] for part in result["parts"]] == ["ok", "ok"], result["parts"]
    assert "| smoke: student mIoU |" in markdown and "| backend onnxruntime-fp32 | passed |" in markdown
    assert re.search(r"\| training: tat_loss_sdpa \| [\d.]+ ms fwd\+bwd at N = 81 \|", markdown)
    assert json.loads((tmp_path / "gpu_check.json").read_text())["machine"]["device"] == "cpu"


def test_a_failing_part_is_a_row_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "training_command", lambda out, device, quick: ["false"])
    monkeypatch.setattr(gpu_check, "smoke_command", lambda out, device, quick: ["false"])
    result, markdown = gpu_check.gpu_check(tmp_path, "cpu", quick=True, timeout=60)
    assert "| part: training benchmark | failed (exit 1) |" in markdown
    assert all(part["status"] != "ok" for part in result["parts"])


def test_make_gpu_check_installs_the_carried_wheels_first():
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\ngpu-check:"):makefile.index("\n# Wheels")]
    assert "pip install" in target and ".whl/*.whl" in target and "pipeline.benchmarks.gpu_check" in target
