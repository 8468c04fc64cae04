"""ONNX Runtime's GPU providers get their options from one place: the engine profile (so the
TensorRT provider never rebuilds for a new shape), engine and timing caches, the device, FP16 only
for FP16 rows, and true FP32 (TF32 off) for the CUDA provider's FP32 parity rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.deployment.tensorrt_engine import profile_shapes
from pipeline.runtime.backends import backend_plan
from pipeline.runtime.provider_options import CUDA_EP, TRT_EP, provider_options


def test_the_tensorrt_provider_carries_the_profile_caches_device_and_precision(tmp_path):
    options = provider_options(TRT_EP, precision="fp32", device_id=1, profile=profile_shapes(64, 8),
                               cache_dir=tmp_path)
    assert options["trt_profile_min_shapes"] == "images:1x3x32x32"
    assert options["trt_profile_opt_shapes"] == "images:1x3x64x64"
    assert options["trt_profile_max_shapes"] == "images:8x3x128x128"
    assert options["trt_engine_cache_enable"] == "True" and options["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert options["trt_timing_cache_path"] == str(tmp_path / "timing")
    assert options["device_id"] == "1" and options["trt_fp16_enable"] == "False"
    assert provider_options(TRT_EP, precision="fp16")["trt_fp16_enable"] == "True"


def test_the_cuda_provider_runs_fp32_rows_without_tf32():
    assert provider_options(CUDA_EP, precision="fp32") == {"device_id": "0", "use_tf32": "0"}
    assert "use_tf32" not in provider_options(CUDA_EP, precision="fp16")
    assert provider_options("CPUExecutionProvider", precision="fp32") == {}


def test_the_backend_plan_hands_the_options_to_the_gpu_rows(monkeypatch, tmp_path):
    seen = {}

    class Recording:
        def __init__(self, path, providers, threads=None, provider_options=None):
            seen[tuple(providers)] = provider_options

    monkeypatch.setattr("pipeline.runtime.OnnxRuntimePredictor", Recording)
    plan = {spec.key: spec for spec in backend_plan(lambda: None, profile=profile_shapes(64, 8), cache_dir=tmp_path)}
    plan["onnxruntime-tensorrt-tf32"].make(Path("x.onnx"))
    plan["onnxruntime-cuda-fp32"].make(Path("x.onnx"))
    plan["onnxruntime-fp32"].make(Path("x.onnx"))
    trt_options, _ = seen[(TRT_EP, CUDA_EP)]
    assert trt_options["trt_profile_max_shapes"] == "images:8x3x128x128"
    assert seen[(CUDA_EP,)] == [{"device_id": "0", "use_tf32": "0"}]
    assert seen[("CPUExecutionProvider",)] is None


def test_a_predictor_refuses_options_that_do_not_pair_with_its_providers(tmp_path):
    from pipeline.runtime import OnnxRuntimePredictor

    with pytest.raises(ValueError, match="one per provider"):
        OnnxRuntimePredictor(tmp_path / "x.onnx", provider_options=[{}, {}])


def test_the_tensorrt_provider_row_is_tf32_with_its_own_tolerances():
    from pipeline.config import load_config
    from pipeline.measurement.validation import TolerancePolicy, verdict

    row = {spec.key: spec for spec in backend_plan(lambda: None)}["onnxruntime-tensorrt-tf32"]
    assert (row.precision, row.model_file) == ("tf32", "fp32")
    policy = TolerancePolicy.from_config(load_config(None).validate_)
    assert policy.logit_atol == {"tf32": 1e-2, "fp32": 1e-4}
    assert not policy.checks_shapes("int8") and policy.metric_drop["tf32"] == 0.1
    assert verdict("tf32", "mIoU", 0.0, 0.1, max_abs_diff=3e-3, atol=1e-2) == {"status": "passed"}
    assert "validate.tf32_atol" in verdict("tf32", "mIoU", 0.0, 0.1, max_abs_diff=3e-2, atol=1e-2)["reason"]
