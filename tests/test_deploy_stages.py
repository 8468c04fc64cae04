"""The deployment stages on a tiny run: proven strip, no teacher in the ONNX, INT8/FP16 validated,
honest TensorRT skip, the benchmark table, and an edge bundle that runs without torch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.builders import build_distiller, build_student, build_teacher
from pipeline.config import load_config
from pipeline.deployment.export import onnx_initializer_names
from pipeline.deployment.tensorrt_engine import installed_tensorrt_version
from pipeline.measurement.benchmark_table import COLUMNS
from pipeline.models import count_parameters
from pipeline.orchestration.cli import main
from pipeline.runtime.backends import LEGACY_ALIASES

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# Smaller than smoke, and few calibration images on purpose (the warning must show).
OVERRIDES = ["run.threads=1", "data.train_size=32", "data.val_size=8", "teacher.train.epochs=1",
             "student.train.epochs=1", "quantize.calibration_images=8", "validate.parity_images=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy")
    assert main(["run", SMOKE, "--out", str(out), *OVERRIDES]) == 0
    return out


@pytest.fixture(scope="module")
def metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def config():
    return load_config(SMOKE, OVERRIDES)


def test_stripped_student_has_the_parameter_count_of_a_fresh_student(metrics, config):
    assert metrics["strip"]["student_params"] == count_parameters(build_student(config))
    assert metrics["strip"]["strict_load"] and metrics["strip"]["outputs_identical"]


def test_no_teacher_or_distillation_weight_is_in_the_onnx_file(run_dir, metrics, config):
    onnx_path = run_dir / metrics["artifacts"]["onnx"]
    distiller = build_distiller(config, build_teacher(config), build_student(config))
    foreign = {key for key in distiller.state_dict() if not key.startswith("student.")}
    names = set(onnx_initializer_names(onnx_path))
    assert foreign and not names & foreign
    assert not any(name.startswith(("teacher.", "methods.")) for name in names)
    elements = sum(int(np.prod(i.dims)) for i in onnx.load(str(onnx_path)).graph.initializer)
    student = build_student(config)
    buffers = sum(b.numel() for b in student.buffers())
    # BN folds into the convs, so the file holds at most the student's parameters and buffers.
    assert 0.9 * count_parameters(student) <= elements <= count_parameters(student) + buffers


def test_export_metadata_carries_the_runs_metrics(run_dir, metrics):
    props = {p.key: p.value for p in onnx.load(str(run_dir / metrics["artifacts"]["onnx"])).metadata_props}
    recorded = json.loads(props["metrics"])
    assert recorded["student_miou"] == metrics["student"]["miou"]
    assert recorded["teacher_miou"] == metrics["teacher"]["miou"]


def test_every_backend_precision_has_an_entry_with_a_status(metrics):
    backends = metrics["backends"]
    for key in ("pytorch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "onnxruntime-fp16", "tensorrt-fp16",
                "tensorrt-int8"):
        assert backends[key]["status"] in ("passed", "validation failed", "export failed", "skipped"), key
    for alias, key in LEGACY_ALIASES.items():  # the first contract's keys still hold the same entry
        assert backends[alias]["status"] == backends[key]["status"]
        assert backends[alias]["miou"] == backends[key]["miou"]
    for entry in backends.values():
        if entry["status"] == "skipped":
            assert entry["reason"]


def test_fp32_parity_holds_at_three_sizes_and_two_batch_sizes(metrics, config):
    entry = metrics["backends"]["onnxruntime-fp32"]
    assert entry["status"] == "passed"
    shapes = {tuple(p["shape"]) for p in entry["parity_shapes"]}
    assert {s[0] for s in shapes} == {1, 2} and len({s[2] for s in shapes}) == 3
    assert all(p["max_abs_diff"] <= config.validate_.atol for p in entry["parity_shapes"])


def test_int8_model_is_calibrated_validated_and_timed(metrics):
    quantize = metrics["quantize"]["int8"]
    assert quantize["status"] == "ok" and quantize["calibration_images"] == 8
    assert "only 8 images" in quantize["calibration_warning"]
    int8 = metrics["backends"]["onnxruntime-int8"]
    # Smoke models are untrained, so INT8 may lose accuracy here; the mechanics must be complete.
    assert int8["status"] in ("passed", "validation failed")
    assert {"miou", "miou_delta", "max_abs_diff", "argmax_agreement"} <= set(int8)
    assert int8["latency_ms"]["p50"] > 0


def test_tensorrt_builds_its_int8_engine_from_an_int8_plus_fp16_model(run_dir, metrics):
    twin = metrics["quantize"]["int8_tensorrt"]
    assert twin["status"] == "ok" and twin["float_precision"] == "fp16" and twin["activation_type"] == "qint8"
    model = onnx.shape_inference.infer_shapes(onnx.load(str(run_dir / twin["path"])))
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    assert all(producer[node.input[0]] == "DequantizeLinear" for node in model.graph.node if node.op_type == "Conv")
    inner = {v.type.tensor_type.elem_type for v in model.graph.value_info} & {onnx.TensorProto.FLOAT,
                                                                              onnx.TensorProto.FLOAT16}
    assert inner == {onnx.TensorProto.FLOAT16}


def test_without_a_gpu_fp16_and_tensorrt_are_skipped_with_the_fix_never_passed(metrics):
    if installed_tensorrt_version() is None:
        for precision in ("fp16", "int8"):
            engine = metrics["engines"][precision]
            assert engine["status"] == "skipped" and "pip install tensorrt" in engine["install_hint"]
            assert metrics["backends"][f"tensorrt-{precision}"]["status"] == "skipped"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        fp16 = metrics["backends"]["onnxruntime-fp16"]
        assert fp16["status"] == "skipped" and "onnxruntime-gpu" in fp16["install_hint"]


def test_benchmark_table_is_written_as_json_csv_and_markdown(run_dir, metrics):
    folder = run_dir / "benchmark"
    table = json.loads((folder / "benchmark.json").read_text())
    keys = [row["key"] for row in table["rows"]]
    assert "onnxruntime-int8" in keys and "pytorch-fp32" in keys
    assert table["machine"]["onnxruntime_version"] and "threads" in table["settings"]
    with open(folder / "benchmark.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(keys)
    assert "p99 ms" in (folder / "benchmark.md").read_text()
    assert "onnxruntime-fp32_vs_pytorch-fp32" in metrics["benchmark"]["speedups"]


def test_deploy_bundle_holds_models_meta_and_script(run_dir):
    bundle = run_dir / "deploy"
    meta = json.loads((bundle / "meta.json").read_text())
    assert set(meta["models"]) >= {"fp32", "fp16", "int8"}
    for name in meta["models"].values():
        assert (bundle / name).is_file()
    assert meta["class_names"][0] == "background" and len(meta["mean"]) == 3
    assert meta["metrics"]["onnxruntime-fp32"]["status"] == "passed"
    assert (bundle / "run_onnx.py").is_file()


def test_bundle_script_runs_in_a_fresh_venv_without_torch(run_dir, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy", "onnxruntime"],
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"cannot install numpy + onnxruntime offline here: {install.stderr.strip()[-300:]}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env).returncode != 0
    script = run_dir / "deploy" / "run_onnx.py"
    done = subprocess.run([str(python), str(script), "--model", "student_int8.onnx", "--benchmark", "--warmup", "1",
                           "--min-iters", "3", "--min-seconds", "0", "--shape", "2x3x48x48",
                           "--out", str(tmp_path / "mask.npy")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["output_shape"][:1] == [2] and report["latency"]["p50_ms"] > 0
    assert np.load(tmp_path / "mask.npy").shape == (2, 48, 48)
