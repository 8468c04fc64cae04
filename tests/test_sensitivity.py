"""Specification of per-node INT8 sensitivity (``python -m pipeline sensitivity RUN_DIR``): one
calibration serves every variant, a node kept float or quantized alone is exactly that, the tables
are sorted by effect and the suggested ``quantize.float_nodes`` follows its rule. The run folders
are made by hand (config.yaml + a small exported model + its completion record): no training."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import PipelineConfig, QuantizeConfig, dump_config, load_config, parse_override
from pipeline.data import dataset_info
from pipeline.deployment.export import export_onnx
from pipeline.deployment.quantize import (
    Int8Recipe,
    calibrate_int8,
    quantize_calibrated,
    quantize_int8,
    quantized_op_types,
    read_calibration_images,
)
from pipeline.errors import PipelineError
from pipeline.measurement import sensitivity
from pipeline.measurement.sensitivity import (
    SensitivityOptions,
    open_run,
    quantized_nodes,
    run_sensitivity,
    suggest_float_nodes,
)
from pipeline.orchestration.cli import main

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


class SegNet(nn.Module):
    """Three quantizable convs, a float classifier, logits upsampled to the input."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                    nn.Conv2d(8, 8, 3, padding=1)])
        self.classifier = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv in self.convs:
            y = F.relu(conv(y))
        return F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ClassNet(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


def make_run(folder: Path, config: PipelineConfig, net_class: type[nn.Module]) -> Path:
    """A run folder as far as sensitivity reads it: config.yaml and a completed export_onnx stage."""
    torch.manual_seed(0)
    net = net_class(dataset_info(config.data).num_classes).eval()
    (folder / "export_onnx").mkdir(parents=True)
    dump_config(config, folder / "config.yaml")
    export_onnx(net, folder / "export_onnx" / "student.onnx", example_shape=(2, 3, SIZE, SIZE), opset=18,
                dynamic=True, argmax=False, metadata={"input_size": [SIZE, SIZE]})
    record = {"stage": "export_onnx", "fingerprint": "handmade", "parts": {}, "seconds": 0.0, "finished_at": "",
              "outputs": {"onnx": {"path": "student.onnx", "sha256": ""}}, "metrics": {}}
    (folder / "export_onnx" / "_complete.json").write_text(json.dumps(record))
    return folder


SMALL = [f"data.image_size={SIZE}", "data.train_size=32", "data.val_size=8", "quantize.calibration_images=32"]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("seg") / "run", load_config(ROOT / "configs/smoke.yaml", SMALL), SegNet)


@pytest.fixture(scope="module")
def calibrated(seg_run: Path, tmp_path_factory: pytest.TempPathFactory):
    run = open_run(seg_run)
    images = read_calibration_images(run.config.data, run.config.quantize.calibration_images)
    recipe = Int8Recipe.from_config(run.config.quantize)
    return calibrate_int8(run.fp32, images, recipe, tmp_path_factory.mktemp("calibrated")), images


def conv_nodes(path: Path) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def weight_quantized(path: Path) -> list[str]:
    """Conv nodes whose weight comes through a DequantizeLinear."""
    model = onnx.load(str(path))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dq_outputs]


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def test_calibrating_once_writes_the_model_quantize_int8_writes(seg_run, calibrated, tmp_path):
    calibration, images = calibrated
    quantize_calibrated(calibration, tmp_path / "once.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_int8(open_run(seg_run).fp32, tmp_path / "stage.onnx", images, calibration.recipe)
    once, stage = onnx.load(str(tmp_path / "once.onnx")), onnx.load(str(tmp_path / "stage.onnx"))
    assert once.SerializeToString() == stage.SerializeToString()  # same nodes, scales, zero points, metadata


def test_keeping_every_node_float_is_the_fp32_model(seg_run, calibrated, tmp_path):
    calibration, _ = calibrated
    path = tmp_path / "all_float.onnx"
    quantize_calibrated(calibration, path, extra_float_nodes=conv_nodes(open_run(seg_run).fp32))
    assert not [n for n in onnx.load(str(path)).graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(logits(path, x), logits(open_run(seg_run).fp32, x), rtol=0, atol=1e-5)


def test_quantize_one_quantizes_that_node_only_and_keep_one_float_all_but_it(seg_run, calibrated, tmp_path):
    calibration, _ = calibrated
    quantize_calibrated(calibration, tmp_path / "full.onnx")
    full = onnx.load(str(tmp_path / "full.onnx"))
    nodes = [name for name, _ in quantized_nodes(full, quantized_op_types(calibration.recipe),
                                                 calibration.excluded_nodes())]
    assert len(nodes) == 3 and nodes == weight_quantized(tmp_path / "full.onnx")  # the classifier stays float
    target = nodes[1]
    quantize_calibrated(calibration, tmp_path / "one.onnx", only_nodes=[target])
    assert weight_quantized(tmp_path / "one.onnx") == [target]
    q_count = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "one.onnx")).graph.node)
    assert 0 < q_count < sum(n.op_type == "QuantizeLinear" for n in full.graph.node)
    quantize_calibrated(calibration, tmp_path / "but_one.onnx", extra_float_nodes=[target])
    assert weight_quantized(tmp_path / "but_one.onnx") == [nodes[0], nodes[2]]


def rows(**gains: float) -> list[dict]:
    return [{"name": name, "delta_vs_int8": gain} for name, gain in gains.items()]


def test_suggestion_takes_the_largest_recoveries_until_int8_is_within_tolerance():
    table = rows(a=0.3, b=1.5, c=-0.1, d=0.8)
    suggestion = suggest_float_nodes(table, fp32=70.0, int8=67.0, tolerance=1.0, existing=("head",))
    assert suggestion.added == ("b", "d") and suggestion.reached  # 67 + 1.5 + 0.8 >= 69; 1.5 alone is short
    assert suggestion.float_nodes == ("head", "b", "d")  # the run's own float nodes stay
    assert suggestion.target == 69.0 and suggestion.estimate == pytest.approx(69.3)
    keys, value = parse_override(suggestion.override())
    assert keys == ["quantize", "float_nodes"] and QuantizeConfig(float_nodes=value).float_nodes == ("head", "b", "d")


def test_suggestion_is_empty_within_tolerance_and_says_when_it_falls_short():
    assert suggest_float_nodes(rows(a=2.0), fp32=70.0, int8=69.5, tolerance=1.0).added == ()
    short = suggest_float_nodes(rows(a=0.5, b=0.2, c=0.0), fp32=70.0, int8=66.0, tolerance=1.0)
    assert short.added == ("a", "b") and not short.reached  # every node that recovers anything, no more


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_gets_tables_sorted_by_effect_and_nothing_else_changes(seg_run, tmp_path):
    before = tree_digest(seg_run)
    report = run_sensitivity(seg_run, SensitivityOptions(iters=2, warmup=0), progress=None)
    after = tree_digest(seg_run)
    assert {k: v for k, v in after.items() if not k.startswith("sensitivity/")} == before
    assert sorted(set(after) - set(before)) == [f"sensitivity/sensitivity.{e}" for e in ("csv", "json", "md")]
    saved = json.loads((seg_run / "sensitivity" / "sensitivity.json").read_text())
    names = [row["name"] for row in saved["rows"]]
    assert names[:2] == ["fp32", "int8"] and saved["nodes_quantized"] == saved["nodes_measured"] == 3
    nodes = [row for row in saved["rows"] if row["kind"] == "node"]
    assert [r["delta_vs_int8"] for r in nodes] == sorted((r["delta_vs_int8"] for r in nodes), reverse=True)
    assert all(r["p50_ms"] > 0 and r["op_type"] == "Conv" for r in nodes)
    # Each node names the module it was exported from, in the table too: node_conv2d_N alone says nothing.
    graph_order = conv_nodes(open_run(seg_run).fp32)
    assert {r["name"]: r["module"] for r in nodes} == {name: f"convs.{i}" for i, name in enumerate(graph_order[:3])}
    assert f"| {graph_order[0]} | Conv | convs.0 |" in (seg_run / "sensitivity" / "sensitivity.md").read_text()
    assert saved["metric"] == "miou" and saved["val_images"] == 8 and saved["suggestion"] == report.context["suggestion"]
    csv_lines = (seg_run / "sensitivity" / "sensitivity.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,kind,op_type,module,metric") and len(csv_lines) == 1 + len(saved["rows"])

    one = run_sensitivity(seg_run, SensitivityOptions(mode="quantize-one", latency=False, max_nodes=2),
                          out=tmp_path / "q1", progress=None)
    drops = [row["delta_vs_fp32"] for row in one.rows if row["kind"] == "node"]
    assert len(drops) == 2 and drops == sorted(drops) and one.suggestion is None
    assert all(row["p50_ms"] is None for row in one.rows)


def test_the_suggested_float_nodes_are_built_and_measured(seg_run, tmp_path, monkeypatch):
    # A scorer with known per-node costs: each quantized conv loses its penalty, FP32 scores 70.
    first, second, third = conv_nodes(open_run(seg_run).fp32)[:3]
    penalty = {first: 2.0, second: 0.1, third: 0.5}
    monkeypatch.setattr(sensitivity._Scorer, "__call__",
                        lambda self, path: (70.0 - sum(penalty[n] for n in weight_quantized(path)), None))
    report = run_sensitivity(seg_run, SensitivityOptions(latency=False), out=tmp_path, progress=None)
    assert [row["name"] for row in report.rows] == ["fp32", "int8", "int8+suggested", first, third, second]
    assert [row["delta_vs_int8"] for row in report.rows[3:]] == [2.0, 0.5, 0.1]
    # INT8 scores 67.4; the tolerance of 1 asks for 69: keeping `first` float is enough (estimate 69.4).
    assert report.suggestion is not None and report.suggestion.added == (first,) and report.suggestion.reached
    assert report.suggestion.measured == pytest.approx(69.4) == report.rows[2]["metric"]
    assert f"quantize.float_nodes=[{first}]" in (tmp_path / "sensitivity.md").read_text()


def test_a_classification_run_is_scored_by_top1(tmp_path):
    config = load_config(ROOT / "configs/classification_smoke.yaml",
                         [f"data.image_size={SIZE}", "data.val_size=8", "quantize.calibration_images=32"])
    report = run_sensitivity(make_run(tmp_path / "cls", config, ClassNet), SensitivityOptions(latency=False),
                             progress=None)
    assert report.context["metric"] == "top1" and report.context["nodes_quantized"] == 2  # the Gemm stays float


def test_the_command_line_says_what_is_wrong_with_the_folder(tmp_path, capsys):
    assert main(["sensitivity", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sensitivity", str(tmp_path)]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err
    dump_config(PipelineConfig(), tmp_path / "config.yaml")
    assert main(["sensitivity", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no FP32 ONNX model" in err and "python -m pipeline run" in err and err.count("\n") == 1
    with pytest.raises(PipelineError, match="unknown sensitivity mode"):
        run_sensitivity(tmp_path, SensitivityOptions(mode="fastest"))
