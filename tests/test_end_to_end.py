"""The smoke config runs every stage through export and ONNX Runtime validation, writes the
metrics contract, skips everything on a second run, and re-runs only downstream of a change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from pipeline.orchestration.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def smoke_run(smoke_reference, tmp_path_factory) -> Path:
    # These tests change the run (re-distil, ...): work on a copy of the session's smoke run.
    return Path(shutil.copytree(smoke_reference, tmp_path_factory.mktemp("smoke") / "run"))


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_metrics_contract(smoke_run):
    m = metrics_of(smoke_run)
    for key in ("teacher", "student_baseline", "student"):
        assert 0 <= m[key]["miou"] <= 100
    assert m["backends"]["pytorch"]["miou"] == pytest.approx(m["student"]["miou"], abs=1e-6)
    ort = m["backends"]["onnxruntime"]
    assert ort["status"] == "passed"
    assert ort["max_abs_diff"] <= 1e-4
    assert abs(ort["miou"] - m["backends"]["pytorch"]["miou"]) <= 0.05
    for backend in ("pytorch", "onnxruntime"):
        latency = m["backends"][backend]["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert latency["mean"] > 0
    for stage in ("train_teacher", "train_student_baseline", "distill_student", "strip", "export_onnx",
                  "validate", "benchmark", "report"):
        assert m["stages"][stage]["seconds"] >= 0
    assert (smoke_run / m["artifacts"]["onnx"]).is_file()
    assert (smoke_run / "report" / "report.md").is_file()
    assert (smoke_run / "config.yaml").is_file()


def test_exported_model_is_one_file_with_metadata_and_no_teacher(smoke_run):
    m = metrics_of(smoke_run)
    path = smoke_run / m["artifacts"]["onnx"]
    assert not list(path.parent.glob("*.data")), "weights must be inside the single ONNX file"
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"])[0] == "background"
    assert {"mean", "std", "input_size", "opset", "torch_version"} <= set(props)
    assert m["strip"]["params_equal"] and m["strip"]["outputs_identical"]
    assert m["strip"]["removed_params"] > 0


def test_second_run_skips_every_stage(smoke_run):
    assert main(["run", SMOKE, "--out", str(smoke_run)]) == 0
    # Stages no configured method needs (teacher_centers without LetKD) stay "disabled".
    assert {s["status"] for s in metrics_of(smoke_run)["stages"].values()} - {"disabled"} == {"skipped"}


# A short run of every training stage, for what a change re-runs (the smoke run's own training takes
# minutes; which stages re-run does not depend on how long they train).
SHORT = ["run.threads=1", "data.train_size=32", "data.val_size=8", "teacher.train.epochs=1",
         "student.train.epochs=1"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("short") / "run"
    assert main(["run", SMOKE, "--out", str(out), *SHORT, "--until", "strip"]) == 0
    return out


def test_changing_a_distillation_setting_reruns_distillation_and_downstream_not_the_teacher(short_run):
    assert main(["run", SMOKE, "--out", str(short_run), *SHORT, "distill.methods=[{name: kd, temperature: 2.0}]",
                 "--until", "strip"]) == 0
    stages = metrics_of(short_run)["stages"]
    assert stages["train_teacher"]["status"] == "skipped"
    assert stages["train_student_baseline"]["status"] == "skipped"
    assert stages["distill_student"]["status"] == "ran"
    assert stages["strip"]["status"] == "ran"


def test_status_explains_what_the_last_change_made_stale(short_run, capsys):
    # The previous test distilled with another temperature; the original config now differs there.
    assert main(["status", SMOKE, "--out", str(short_run), *SHORT]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "up to date" in lines["train_teacher"]
    assert "config changed (distill)" in lines["distill_student"]
    assert "input distill_student re-runs" in lines["strip"]


def test_bad_config_fails_before_any_work(tmp_path, capsys):
    assert main(["run", SMOKE, "--out", str(tmp_path / "x"), "distill.ce_wieght=1"]) == 2
    assert "did you mean 'distill.ce_weight'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
