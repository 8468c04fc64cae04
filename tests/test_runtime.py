"""Specification of the inference backends, latency measurement and tensor parity."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.deployment.export import export_onnx
from pipeline.measurement.latency import LatencyStats, machine_info, measure_latency
from pipeline.measurement.validation import BackendRun, TolerancePolicy, compare, evaluate_predictor, tensor_parity
from pipeline.runtime import (
    BackendUnavailable,
    OnnxRuntimePredictor,
    Predictor,
    TorchPredictor,
    available_onnxruntime_providers,
)

NUM_CLASSES = 5


class ToyNet(nn.Module):
    """conv-BN-ReLU (stride 2) - conv, logits upsampled bilinearly to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.classifier = nn.Conv2d(8, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(F.relu(self.bn(self.conv1(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def net() -> ToyNet:
    torch.manual_seed(0)
    model = ToyNet()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def onnx_file(net: ToyNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE dynamic file serves every size and batch below."""
    path = tmp_path_factory.mktemp("rt") / "toy.onnx"
    return export_onnx(net, path, example_shape=(2, 3, 64, 64), opset=18, dynamic=True, argmax=False, metadata={})


# ----------------------------------------------------------------------------- predictors
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(64, 64), (96, 80), (128, 128)])
def test_torch_and_onnxruntime_agree_at_any_size_from_one_file(
    net: ToyNet, onnx_file: Path, batch: int, size: tuple[int, int]
) -> None:
    images = np.random.default_rng(batch).standard_normal((batch, 3, *size), dtype=np.float32)
    reference = TorchPredictor(net).predict(images)
    candidate = OnnxRuntimePredictor(onnx_file, threads=1).predict(images)
    assert reference.shape == candidate.shape == (batch, NUM_CLASSES, *size)
    assert reference.dtype == candidate.dtype == np.float32
    parity = tensor_parity(reference, candidate)
    assert parity["max_abs_diff"] <= 1e-4
    assert parity["argmax_agreement"] == 100.0


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_a_static_export_takes_any_batch_in_chunks_of_its_own(net: ToyNet, tmp_path: Path, batch: int) -> None:
    static = export_onnx(net, tmp_path / "static.onnx", example_shape=(2, 3, 32, 32), opset=18, dynamic=False,
                         argmax=False, metadata={})
    predictor = OnnxRuntimePredictor(static, threads=1)
    assert predictor.fixed_batch == 2
    images = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    assert tensor_parity(TorchPredictor(net).predict(images), predictor.predict(images))["max_abs_diff"] <= 1e-4


def test_predictors_follow_the_protocol_and_describe_themselves(net: ToyNet, onnx_file: Path) -> None:
    torch_pred = TorchPredictor(net)
    ort_pred = OnnxRuntimePredictor(onnx_file, threads=1)
    for pred in (torch_pred, ort_pred):
        assert isinstance(pred, Predictor)
        info = pred.describe()
        assert {"backend", "precision", "device", "provider", "threads"} <= info.keys()
    assert (torch_pred.backend, torch_pred.precision, torch_pred.device) == ("pytorch", "fp32", "cpu")
    assert (ort_pred.backend, ort_pred.precision, ort_pred.device) == ("onnxruntime", "fp32", "cpu")
    assert ort_pred.describe()["providers"] == ["CPUExecutionProvider"]
    assert ort_pred.describe()["threads"] == 1
    assert (ort_pred.input_name, ort_pred.output_name) == ("images", "logits")


def test_onnxruntime_precision_comes_from_model_metadata(onnx_file: Path, tmp_path: Path) -> None:
    model = onnx.load(str(onnx_file))
    onnx.helper.set_model_props(model, {"precision": "int8"})
    tagged = tmp_path / "int8.onnx"
    onnx.save(model, str(tagged))
    assert OnnxRuntimePredictor(tagged).precision == "int8"


@pytest.mark.parametrize(
    "provider, hint",
    [("CUDAExecutionProvider", "onnxruntime-gpu"), ("NoSuchExecutionProvider", "pip install onnxruntime-gpu")],
)
def test_missing_provider_raises_backend_unavailable_with_hint(onnx_file: Path, provider: str, hint: str) -> None:
    if provider in available_onnxruntime_providers():
        pytest.skip(f"{provider} is available on this machine")
    with pytest.raises(BackendUnavailable) as info:
        OnnxRuntimePredictor(onnx_file, providers=(provider,))
    assert provider in info.value.reason
    assert hint in info.value.install_hint
    assert info.value.to_dict()["status"] == "skipped"


def test_cpu_provider_is_always_listed() -> None:
    assert "CPUExecutionProvider" in available_onnxruntime_providers()


# ----------------------------------------------------------------------------- latency
def test_latency_percentiles_are_ordered_and_throughput_follows_batch() -> None:
    stats = measure_latency(lambda: sum(range(200)), batch_size=4, warmup=2, min_iters=30, min_seconds=0.0)
    assert isinstance(stats, LatencyStats)
    assert stats.min <= stats.p50 <= stats.p90 <= stats.p95 <= stats.p99
    assert stats.std >= 0 and stats.mean > 0
    assert stats.throughput == pytest.approx(4 * stats.iters / stats.seconds)
    assert set(stats.to_dict()) == {"p50", "p90", "p95", "p99", "mean", "std", "min", "iters", "seconds", "throughput"}


def test_latency_honours_warmup_and_min_iters() -> None:
    calls = []
    stats = measure_latency(lambda: calls.append(1), warmup=7, min_iters=25, min_seconds=0.0)
    assert stats.iters == 25
    assert len(calls) == 7 + 25  # warm-up calls are made but not timed


def test_latency_keeps_going_until_min_seconds() -> None:
    stats = measure_latency(lambda: time.sleep(0.001), warmup=0, min_iters=3, min_seconds=0.05)
    assert stats.iters >= 3
    assert stats.seconds >= 0.05


def test_machine_info_names_cpu_and_versions() -> None:
    info = machine_info()
    assert info["cpu"] and info["cores_logical"] >= 1
    assert info["torch_version"] == torch.__version__
    assert info["onnxruntime_version"] and info["onnx_version"]
    assert "cuda_device" in info


# ----------------------------------------------------------------------------- parity
def test_tensor_parity_of_identical_tensors_is_perfect() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4), dtype=np.float32)
    assert tensor_parity(x, x.copy()) == {
        "max_abs_diff": 0.0, "mean_abs_diff": 0.0, "max_rel_diff": 0.0, "argmax_agreement": 100.0,
    }


def test_tensor_parity_hand_example() -> None:
    # (1, 2 classes, 1, 2 pixels): reference picks class 0 then class 1; candidate picks 0 and 0.
    reference = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=np.float32)
    candidate = np.array([[[[1.0, 0.5]], [[0.0, 0.25]]]], dtype=np.float32)
    parity = tensor_parity(reference, candidate)
    assert parity["max_abs_diff"] == pytest.approx(0.75)
    assert parity["mean_abs_diff"] == pytest.approx((0 + 0.5 + 0 + 0.75) / 4)
    # 0.5 off a reference of 0 is divided by the floor (1e-3), not by zero.
    assert parity["max_rel_diff"] == pytest.approx(0.5 / 1e-3)
    assert parity["argmax_agreement"] == pytest.approx(50.0)


def test_tensor_parity_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        tensor_parity(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4)))


def test_the_comparator_judges_a_run_against_the_reference_by_the_tolerance_of_its_precision() -> None:
    logits = np.zeros((1, 2, 2, 2), np.float32)
    shape = ((1, 3, 2, 2), logits)
    reference = BackendRun(logits, {"miou": 50.0}, {"backend": "pytorch"}, (shape, shape))
    policy = TolerancePolicy({"fp32": 0.05, "int8": 1.0}, {"fp32": 1e-4})
    off = logits + np.float32(1e-3)
    fp32 = compare(reference, BackendRun(logits, {"miou": 50.0}, {"backend": "ort"}, (shape, ((1, 3, 2, 2), off))),
                   "fp32", policy, "miou", "mIoU")
    assert [p["max_abs_diff"] for p in fp32["parity_shapes"]] == [0.0, pytest.approx(1e-3)]
    assert fp32["status"] == "validation failed" and "validate.atol" in fp32["reason"]
    assert fp32["runtime"] == {"backend": "ort"} and fp32["miou_delta"] == 0.0
    int8 = compare(reference, BackendRun(off, {"miou": 49.2}, {}), "int8", policy, "miou", "mIoU")
    assert int8["status"] == "passed" and "parity_shapes" not in int8 and int8["miou_delta"] == -0.8


class MaskEchoPredictor:
    """A fake backend whose logits are the one-hot of masks it was given in advance."""

    backend, precision, device = "fake", "fp32", "cpu"

    def __init__(self, masks: list[np.ndarray], num_classes: int) -> None:
        self.masks = iter(masks)
        self.num_classes = num_classes

    def predict(self, images: np.ndarray) -> np.ndarray:
        mask = next(self.masks)
        labels = np.where(mask == 255, 0, mask)  # any class will do where the target is ignored
        return np.eye(self.num_classes, dtype=np.float32)[labels].transpose(0, 3, 1, 2)

    def describe(self) -> dict:
        return {"backend": self.backend}


def test_evaluate_predictor_scores_a_perfect_backend_100() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, size=(2, 8, 8)) for _ in range(3)]
    masks[0][0, 0, :] = 255
    batches = [(np.zeros((2, 3, 8, 8), np.float32), m) for m in masks]
    matrix = evaluate_predictor(MaskEchoPredictor(masks, 3), batches, num_classes=3)
    assert matrix.miou() == pytest.approx(100.0)
    assert matrix.matrix.sum() == 3 * 2 * 8 * 8 - 8  # ignored pixels are not counted


def test_the_backend_table_is_the_backend_registry_in_registration_order():
    from pipeline.runtime.backends import BACKENDS, REFERENCE_KEY, backend_plan

    plan = backend_plan(lambda: None)
    assert [spec.key for spec in plan] == [entry.key for entry in BACKENDS.entries()]
    assert plan[0].key == REFERENCE_KEY, "the PyTorch reference runs first"
    assert all(spec.key.removesuffix("-qat").endswith(f"-{spec.precision}") for spec in plan), \
        "metrics.json keys: <backend>-<precision>, -qat for the quantization-aware model"
    with pytest.raises(ValueError, match="unknown backend 'onnxruntime-int9'; did you mean 'onnxruntime-int8'"):
        BACKENDS.get("onnxruntime-int9")
