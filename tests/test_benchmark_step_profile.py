"""The training-step profile splits a step into backbone, ASPP, decoder and optimizer (with the
multiply-adds of each part) for teacher and student, times each convolution alone, and times the
distillation step's parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.benchmarks.step_profile import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_profile_splits_teacher_and_student_steps_and_the_distillation_step(tmp_path):
    out = tmp_path / "profile"
    assert main(["--config", str(ROOT / "configs" / "smoke.yaml"), "--threads", "1", "--repeats", "1",
                 "--warmup", "0", "--out", str(out), "student.train.batch_size=2"]) == 0
    result = json.loads((out / "step_profile.json").read_text())
    for role in ("teacher", "student"):
        entry = result[role]
        assert set(entry["parts_ms"]) == {"backbone", "aspp", "decoder", "optimizer", "other"}
        assert sum(entry["parts_ms"].values()) == pytest.approx(entry["step_ms"], abs=0.01)
        macs = entry["gmac_per_image"]
        assert min(macs["backbone"], macs["aspp"], macs["decoder"]) > 0
        # The three parts hold every multiply-add of the model (each figure rounded to 1e-4 GMAC).
        assert macs["backbone"] + macs["aspp"] + macs["decoder"] == pytest.approx(macs["total"], abs=3e-4)
        convs = entry["convolutions"]
        costs = [conv["forward_backward_ms"] for conv in convs["costliest"]]
        assert costs == sorted(costs, reverse=True) and 0 < len(costs) <= min(8, convs["count"])
        assert convs["forward_backward_ms"] >= sum(costs) > 0 and convs["forward_ms"] > 0
    assert result["teacher"]["backbone"] == "resnet18" and result["student"]["backbone"] == "mobilenet_v2"
    distillation = result["distillation"]
    assert list(distillation["methods_ms"]) == ["loss tat_seg"] and distillation["teacher_forward_ms"] > 0
    assert "cpu-" in result["machine"]["hardware"]
    text = (out / "step_profile.md").read_text()
    assert "| teacher resnet18" in text and "teacher: all " in text and "| backbone.layer" in text
