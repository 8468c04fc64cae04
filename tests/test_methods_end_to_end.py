"""Every registered method trains end to end with the smoke config and strips to a deployable student.
One teacher is trained once and its stage folder hard-linked into each method's run, where the runner
finds it up to date. Only LetKD changes the student: it goes on through ONNX export and ONNX Runtime
validation, and its ONNX file holds the KD layer. Every other method strips to exactly the plain
student (strict load, same parameter count, no extra weights), the architecture that test_end_to_end.py
exports and validates, so exporting it once per method would test nothing new."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from pipeline.builders import build_student
from pipeline.config import load_config
from pipeline.distill import available_methods
from pipeline.models import count_parameters
from pipeline.orchestration.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# Smallest run that still crosses every stage up to validation; the teacher's slice is shared.
FAST = ["run.threads=1", "baseline.enabled=false", "teacher.train.epochs=1", "student.train.epochs=1",
        "student.train.max_steps_per_epoch=2", "data.train_size=32", "data.val_size=4", "validate.parity_images=2",
        "validate.batch_size=2", "quantize.int8=false", "quantize.fp16=false"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    assert main(["run", SMOKE, "--out", str(out), *FAST, "--until", "train_teacher"]) == 0
    return out


def run_method(name: str, teacher_run: Path, out: Path) -> dict:
    shutil.copytree(teacher_run / "train_teacher", out / "train_teacher", copy_function=os.link)
    last_stage = "validate" if name == "letkd" else "strip"
    assert main(["run", SMOKE, "--out", str(out), *FAST, f"distill.methods=[{{name: {name}}}]",
                 "--until", last_stage]) == 0
    return json.loads((out / "metrics.json").read_text())


def onnx_initializers(path: Path) -> dict[str, int]:
    model = onnx.load(str(path))
    return {init.name: int(onnx.numpy_helper.to_array(init).size) for init in model.graph.initializer}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(available_methods()))
def test_method_trains_and_strips_to_a_deployable_student(name, teacher_run, tmp_path):
    metrics = run_method(name, teacher_run, tmp_path)
    assert metrics["stages"]["train_teacher"]["status"] == "skipped", "the shared teacher must be reused"
    assert metrics["strip"]["params_equal"] and metrics["strip"]["outputs_identical"]

    config = load_config(SMOKE, [*FAST, f"distill.methods=[{{name: {name}}}]"])
    plain_params = count_parameters(build_student(config, with_methods=False))
    if name == "letkd":
        assert metrics["backends"]["onnxruntime"]["status"] == "passed"
        initializers = onnx_initializers(tmp_path / metrics["artifacts"]["onnx"])
        layer = {key for key in initializers if key.startswith("neck.")}
        templates, channels = 128, build_student(config).feature_channels["stage4"]
        assert metrics["strip"]["student_params"] > plain_params
        assert {"neck.scores.scale", "neck.value.scale", "neck.norm.weight", "neck.norm.running_mean"} <= layer
        # The two cosine convs' (normalised, folded) weights are in the graph: K x C each.
        assert sum(size == templates * channels for size in initializers.values()) >= 2
        assert metrics["teacher_centers"]["letkd"]["num_centers"] == templates
    else:
        assert metrics["strip"]["student_params"] == plain_params
        stripped = torch.load(tmp_path / "strip" / "student.pt", weights_only=True)
        assert stripped.keys() == build_student(config, with_methods=False).state_dict().keys(), \
            f"{name} must strip to exactly the plain student's weights"
