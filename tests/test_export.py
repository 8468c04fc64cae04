"""Specification of the ONNX export: one checked file, fixed names, dynamic dims, provenance."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.deployment import export as export_mod
from pipeline.deployment.export import export_onnx, onnx_initializer_names, read_metadata, simplify_onnx

NUM_CLASSES = 4


class ToyNet(nn.Module):
    """conv-BN-ReLU (stride 2) - conv, logits upsampled bilinearly to the input size."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(F.relu(self.bn(self.conv1(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class WithTeacher(nn.Module):
    """Like a Distiller: holds a teacher it never uses at inference."""

    def __init__(self) -> None:
        super().__init__()
        self.student = ToyNet()
        self.teacher = ToyNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model cannot run")


def toy_net() -> ToyNet:
    torch.manual_seed(0)
    net = ToyNet()
    net.bn.running_mean.uniform_(-0.5, 0.5)  # non-trivial BN stats so folding is exercised
    net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


META = {"class_names": ["bg", "a", "b", "c"], "input_size": "64", "git_sha": "abc123"}


def dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def run_ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})


@pytest.fixture(scope="module")
def dynamic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dyn") / "model.onnx"
    out = export_onnx(
        toy_net(), path, example_shape=(2, 3, 64, 64), opset=18, dynamic=True, argmax=False, metadata=META
    )
    assert out == path
    return path


@pytest.fixture(scope="module")
def argmax_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("argmax") / "model.onnx"
    return export_onnx(toy_net(), path, example_shape=(2, 3, 64, 64), opset=18, dynamic=True, argmax=True, metadata={})


def test_dynamic_export_is_one_checked_file_and_nothing_else(dynamic_file: Path) -> None:
    assert sorted(p.name for p in dynamic_file.parent.iterdir()) == ["model.onnx"]  # no .data, no temp
    onnx.checker.check_model(str(dynamic_file), full_check=True)
    model = onnx.load(str(dynamic_file), load_external_data=False)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def test_metadata_holds_caller_keys_and_provenance(dynamic_file: Path) -> None:
    meta = read_metadata(dynamic_file)
    assert json.loads(meta["class_names"]) == META["class_names"]  # non-strings stored as JSON
    assert meta["input_size"] == "64" and meta["git_sha"] == "abc123"
    assert meta["exporter"] == "dynamo"
    assert meta["opset"] == "18"
    assert meta["torch_version"] == torch.__version__
    assert meta["onnx_version"] == onnx.__version__
    assert meta["dynamic"] == "true" and meta["argmax"] == "false"


def test_dynamic_export_has_fixed_names_and_symbolic_batch_height_width(dynamic_file: Path) -> None:
    graph = onnx.load(str(dynamic_file)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["logits"]
    b, c, h, w = dims(graph.input[0])
    assert c == 3 and all(isinstance(d, str) and d for d in (b, h, w))
    assert dims(graph.output[0]) == [b, NUM_CLASSES, h, w]


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 3, 96, 80), (1, 3, 128, 128), (3, 3, 37, 51)])
def test_dynamic_export_runs_at_other_sizes_and_matches_torch(dynamic_file: Path, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    (logits,) = run_ort(dynamic_file, x)
    with torch.inference_mode():
        ref = toy_net()(torch.from_numpy(x)).numpy()
    assert logits.shape == (shape[0], NUM_CLASSES, *shape[2:])
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)


def test_static_export_has_fixed_dims(tmp_path: Path) -> None:
    path = export_onnx(toy_net(), tmp_path / "static.onnx", example_shape=(1, 3, 32, 48), opset=18,
                       dynamic=False, argmax=False, metadata={})
    graph = onnx.load(str(path)).graph
    assert dims(graph.input[0]) == [1, 3, 32, 48]
    assert dims(graph.output[0]) == [1, NUM_CLASSES, 32, 48]
    assert read_metadata(path)["dynamic"] == "false"
    (logits,) = run_ort(path, np.zeros((1, 3, 32, 48), np.float32))
    assert logits.shape == (1, NUM_CLASSES, 32, 48)


def test_argmax_adds_int64_labels_equal_to_argmax_of_logits(argmax_file: Path) -> None:
    graph = onnx.load(str(argmax_file)).graph
    assert [o.name for o in graph.output] == ["logits", "labels"]
    labels_info = graph.output[1]
    assert labels_info.type.tensor_type.elem_type == onnx.TensorProto.INT64
    b, _, h, w = dims(graph.output[0])
    assert dims(labels_info) == [b, h, w]
    x = np.random.default_rng(2).standard_normal((3, 3, 40, 56), dtype=np.float32)
    logits, labels = run_ort(argmax_file, x)
    assert labels.dtype == np.int64 and labels.shape == (3, 40, 56)
    np.testing.assert_array_equal(labels, logits.argmax(1))


def test_failed_export_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "broken.onnx"
    with pytest.raises(RuntimeError, match="cannot run"):
        export_onnx(Broken(), dest, example_shape=(2, 3, 32, 32), opset=18, dynamic=True, argmax=False, metadata={})
    assert list(tmp_path.iterdir()) == []


def test_exporter_crash_after_partial_write_leaves_previous_file_intact(tmp_path: Path, monkeypatch) -> None:
    def write_half_then_fail(net, example, dst, **kwargs):
        Path(dst).write_bytes(b"half an onnx file")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export_mod, "_export_dynamo", write_half_then_fail)
    monkeypatch.setattr(export_mod, "_export_torchscript", write_half_then_fail)
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous good file")
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(toy_net(), dest, example_shape=(2, 3, 32, 32), opset=18, dynamic=True, argmax=False, metadata={})
    assert dest.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_dynamo_failure_falls_back_to_torchscript_and_says_so(tmp_path: Path, monkeypatch) -> None:
    def dynamo_fails(*args, **kwargs):
        raise RuntimeError("dynamo cannot trace this")

    monkeypatch.setattr(export_mod, "_export_dynamo", dynamo_fails)
    path = export_onnx(toy_net(), tmp_path / "ts.onnx", example_shape=(2, 3, 64, 64), opset=17,
                       dynamic=True, argmax=False, metadata={})
    meta = read_metadata(path)
    assert meta["exporter"] == "torchscript" and meta["opset"] == "17"
    assert "dynamo cannot trace this" in meta["exporter_fallback_reason"]
    x = np.random.default_rng(3).standard_normal((3, 3, 48, 40), dtype=np.float32)
    (logits,) = run_ort(path, x)
    with torch.inference_mode():
        np.testing.assert_allclose(logits, toy_net()(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=0)


def test_opset_metadata_is_the_files_real_opset(tmp_path: Path) -> None:
    # The dynamo exporter builds at opset >= 18 and may fail to convert down; the file must say so.
    path = export_onnx(toy_net(), tmp_path / "old.onnx", example_shape=(2, 3, 32, 32), opset=13,
                       dynamic=True, argmax=False, metadata={})
    real = next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))
    meta = read_metadata(path)
    assert meta["opset"] == str(real)
    if real != 13:
        assert meta["opset_requested"] == "13"


def test_unused_teacher_weights_are_not_in_the_file(tmp_path: Path) -> None:
    path = export_onnx(WithTeacher().eval(), tmp_path / "student.onnx", example_shape=(2, 3, 32, 32), opset=18,
                       dynamic=True, argmax=False, metadata={})
    names = onnx_initializer_names(path)
    assert any(name.startswith("student.") for name in names)
    assert not any("teacher" in name for name in names)


class Relu6Net(nn.Module):
    """MobileNetV2's activations: ReLU6 (a Hardtanh) and a Hardtanh with other bounds."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(inplace=True),
                                 nn.Conv2d(8, NUM_CLASSES, 1), nn.Hardtanh(-0.5, 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x * 8.0)


def test_hardtanh_exports_as_clip_with_the_same_values_and_the_callers_model_keeps_its_modules(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Relu6Net().eval()
    path = export_onnx(net, tmp_path / "relu6.onnx", example_shape=(2, 3, 16, 16), opset=18, dynamic=True,
                       argmax=False, metadata={})
    assert [node.op_type for node in onnx.load(str(path)).graph.node].count("Clip") == 2
    x = torch.randn(3, 3, 20, 12)
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(run_ort(path, x.numpy())[0], expected, atol=1e-5)  # convolutions round differently
    assert isinstance(net.act[1], nn.ReLU6) and isinstance(net.act[3], nn.Hardtanh)


def test_batch_norms_are_folded_into_their_convs_before_export_to_the_same_file_values(tmp_path, monkeypatch):
    from pipeline.config import ModelConfig
    from pipeline.models import build_segmentation_model

    torch.manual_seed(0)
    model = build_segmentation_model(ModelConfig(backbone="resnet18", aspp_channels=8, decoder_channels=8,
                                                 low_level_channels=4), 3).eval()
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in batch_norms:  # statistics that are not the identity
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.data.uniform_(0.5, 1.5)
    # Static shapes: what folding changes does not depend on them, and each export is then seconds.
    folded = export_onnx(model, tmp_path / "folded.onnx", example_shape=(2, 3, 32, 32), opset=18, dynamic=False,
                         argmax=False, metadata={})
    fold_batchnorm = export_mod._fold_batchnorm
    monkeypatch.setattr(export_mod, "_fold_batchnorm", lambda module: None)
    unfolded = export_onnx(model, tmp_path / "unfolded.onnx", example_shape=(2, 3, 32, 32), opset=18, dynamic=False,
                           argmax=False, metadata={})
    op_types = [[node.op_type for node in onnx.load(str(path)).graph.node] for path in (folded, unfolded)]
    assert op_types[0] == op_types[1] and "BatchNormalization" not in op_types[0]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(run_ort(folded, x)[0], run_ort(unfolded, x)[0], atol=1e-5, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(run_ort(folded, x)[0], model(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=0)
    assert [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == batch_norms  # the caller's model keeps them
    exported_copy = copy.deepcopy(model)
    fold_batchnorm(exported_copy)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in exported_copy.modules())


def test_simplify_keeps_metadata_dynamic_dims_and_outputs(dynamic_file: Path, tmp_path: Path) -> None:
    slim = simplify_onnx(dynamic_file, tmp_path / "slim.onnx")
    meta = read_metadata(slim)
    assert meta["exporter"] == "dynamo" and meta["simplifier"].startswith("onnxslim")
    graph = onnx.load(str(slim)).graph
    assert dims(graph.input[0])[2:] == dims(onnx.load(str(dynamic_file)).graph.input[0])[2:]
    x = np.random.default_rng(4).standard_normal((2, 3, 72, 88), dtype=np.float32)
    np.testing.assert_allclose(run_ort(slim, x)[0], run_ort(dynamic_file, x)[0], atol=1e-5, rtol=0)
