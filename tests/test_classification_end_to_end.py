"""The classification smoke config runs every stage through strip, export and ONNX Runtime
validation, and its metrics.json speaks classification (top-1/top-5, not mIoU)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from pipeline.orchestration.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "classification_smoke.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classification_smoke")
    assert main(["run", SMOKE, "--out", str(out)]) == 0
    return out


def test_metrics_report_top1_and_top5_for_every_model_and_backend(run):
    m = json.loads((run / "metrics.json").read_text())
    for key in ("teacher", "student_baseline", "student"):
        assert 0 <= m[key]["top5"] <= 100 and 0 <= m[key]["top1"] <= m[key]["top5"]
        assert "miou" not in m[key]
    assert m["backends"]["pytorch"]["top1"] == pytest.approx(m["student"]["top1"], abs=1e-6)
    ort = m["backends"]["onnxruntime"]
    assert ort["status"] == "passed" and ort["max_abs_diff"] <= 1e-4 and ort["argmax_agreement"] == 100.0
    assert abs(ort["top1_delta"]) <= 0.05
    assert m["strip"]["params_equal"] and m["strip"]["outputs_identical"] and m["strip"]["removed_params"] > 0
    report = (run / "report" / "report.md").read_text()
    assert "val top-1 %" in report and "Per-class IoU" not in report


def test_exported_classifier_outputs_batch_by_classes_logits_with_task_metadata(run):
    path = run / json.loads((run / "metrics.json").read_text())["artifacts"]["onnx"]
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["task"] == "classification" and json.loads(props["input_size"]) == [32, 32]
    assert "student_top1" in json.loads(props["metrics"]) and "aspp_channels" not in json.loads(props["student"])
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", int(props["num_classes"])]


def test_the_edge_bundle_of_a_classifier_says_so_and_its_script_reports_the_top_classes(run, tmp_path):
    import subprocess
    import sys

    import numpy as np

    bundle = run / "deploy"
    meta = json.loads((bundle / "meta.json").read_text())
    assert meta["task"] == "classification" and "(batch, num_classes)" in meta["output"]["layout"]
    done = subprocess.run([sys.executable, str(bundle / "run_onnx.py"), "--model", "student_fp32.onnx", "--shape",
                           "3x3x32x32", "--out", str(tmp_path / "classes.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)["predictions"]
    assert len(predictions) == 3 and all(len(top) == 5 for top in predictions)
    assert all(row[0]["class"] in meta["class_names"] and row[0]["probability"] >= row[1]["probability"]
               for row in predictions)
    assert np.load(tmp_path / "classes.npy").shape == (3,)
