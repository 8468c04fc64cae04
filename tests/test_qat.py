"""Quantization-aware training: the fake-quantized student is exactly what its Q/DQ ONNX model runs,
its batch norms fold into the quantized weights, stripping leaves exactly the plain student, and
the qat_student stage delivers validated, benchmarked, bundled INT8 models with and without the
teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pipeline.builders import build_student
from pipeline.config import load_config
from pipeline.deployment.export import export_onnx
from pipeline.deployment.fake_quant import (
    ActivationQuantizer,
    FakeQuantScheme,
    QuantConv2d,
    QuantReLU6,
    calibrate_ranges,
    export_ready,
    fold_weight_quantizers,
    prepare_qat,
    quantize_dequantize,
    quantizer_state,
    quantizers,
    strip_quantizers,
)
from pipeline.deployment.quantize import reduce_range_here
from pipeline.orchestration.cli import main

ROOT = Path(__file__).resolve().parents[1]
# The ONNX Runtime recipe for this CPU, as the QAT stage builds it: 7-bit weights where x86 has no VNNI
# (its U8S8 kernels add pairs of products in saturating 16-bit lanes), 8-bit elsewhere.
WEIGHT_BITS_HERE = 7 if reduce_range_here("auto")[0] else 8
U8 = FakeQuantScheme(signed_activations=False, weight_bits=WEIGHT_BITS_HERE)


def conv_bn(cin: int, cout: int, act: bool) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), *([nn.ReLU6()] if act else [])]


def tiny_net() -> nn.Sequential:
    """conv-bn-relu6, conv-bn-relu6, conv-bn: the last conv's output is quantized (nothing follows)."""
    torch.manual_seed(0)
    net = nn.Sequential(*conv_bn(3, 8, True), *conv_bn(8, 8, True), *conv_bn(8, 4, False))
    for m in net.modules():  # non-trivial batch norm statistics, so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def qat_net(scheme: FakeQuantScheme = U8) -> nn.Sequential:
    net = prepare_qat(tiny_net(), scheme)
    calibrate_ranges(net, [torch.randn(8, 3, 16, 16) for _ in range(3)])
    return net.eval()


def export_qdq(net: nn.Module, path: Path, signed: bool = False) -> Path:
    export_onnx(export_ready(net, signed_activations=signed), path, example_shape=(2, 3, 16, 16), opset=17,
                dynamic=True, argmax=False, metadata={}, exporter="torchscript")
    model = onnx.load(str(path))
    fold_weight_quantizers(model)
    onnx.save(model, str(path))
    return path


def graph_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant of the graph by name: initializers and Constant nodes' outputs."""
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    constants.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                      if n.op_type == "Constant"})
    return constants


def run_ort(path: Path, x: np.ndarray, optimize: bool) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_prepare_keeps_every_parameter_and_only_adds_quantizer_buffers():
    plain = tiny_net()
    net = prepare_qat(tiny_net(), U8)
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert strip_quantizers(net.state_dict()).keys() == plain.state_dict().keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert quantizer_state(net.state_dict()) and set(quantizer_state(net.state_dict())).isdisjoint(plain.state_dict())
    # Each tensor is quantized once: the network's input by the first conv, the activations after
    # convs by themselves (the next conv reads them as they are), the last conv's output by that conv.
    convs = [m for m in net if isinstance(m, QuantConv2d)]
    assert [c.input_quantizer is not None for c in convs] == [True, False, False]
    assert [c.input_range[0] for c in convs] == [convs[0].input_quantizer, net[2].output_quantizer,
                                                 net[5].output_quantizer]
    assert [c.output_quantizer is not None for c in convs] == [False, False, True]
    assert sum(isinstance(m, QuantReLU6) for m in net) == 2


def test_the_folded_weight_and_bias_equal_the_conv_then_its_batch_norm():
    plain, net = tiny_net(), prepare_qat(tiny_net(), U8)
    conv, bn = plain[0], plain[1]
    weight, bias = net[0].folded()
    x = torch.randn(2, 3, 16, 16)
    expected = bn(conv(x))
    assert torch.allclose(nn.functional.conv2d(x, weight, bias, padding=1), expected, atol=1e-5)


def test_weights_are_per_channel_symmetric_on_at_most_255_levels_and_7_bit_when_asked():
    for bits, levels in ((8, 255), (7, 127)):
        net = prepare_qat(tiny_net(), FakeQuantScheme(signed_activations=False, weight_bits=bits))
        weight, _ = net[3].folded()
        scale = net[3].weight_scale(weight)
        q = torch.round(weight.detach() / scale.reshape(-1, 1, 1, 1))
        assert q.abs().max() <= (levels - 1) // 2
        assert all(len(torch.unique(q[c])) <= levels for c in range(q.shape[0]))


def test_per_tensor_weights_share_one_scale_per_convolution():
    net = qat_net(FakeQuantScheme(signed_activations=False, per_channel_weights=False))
    weight, bias = net[3].folded()
    scale = net[3].weight_scale(weight)
    assert scale.ndim == 0 and scale == weight.detach().abs().max() / 127
    q = torch.round(weight.detach() / scale)
    assert q.abs().max() == 127 and len(torch.unique(q)) <= 255
    # The fake-quantized weight is that grid: the convolution's output with it equals one computed by hand
    # (its input comes quantized from the ReLU6 before it).
    x = net[2](torch.randn(1, 8, 16, 16))
    with torch.no_grad():
        by_hand = nn.functional.conv2d(x, q * scale, net[3].quantized_bias(bias, scale), padding=1)
        assert torch.allclose(net[3](x), by_hand, atol=1e-5)


def test_the_bias_is_on_the_int32_grid_of_input_scale_times_weight_scale():
    """Where ONNX Runtime's integer convolution adds it (its optimiser quantizes a float bias so)."""
    for per_channel in (True, False):
        net = qat_net(FakeQuantScheme(signed_activations=False, weight_bits=WEIGHT_BITS_HERE,
                                      per_channel_weights=per_channel))
        for conv in (net[0], net[3]):
            weight, bias = conv.folded()
            step = conv.input_range[0].scale() * conv.weight_scale(weight)
            with torch.no_grad():
                code = conv.quantized_bias(bias, step / conv.input_range[0].scale()) / step
            assert torch.allclose(code, code.round(), atol=1e-3)
            assert ((code * step - bias).abs() <= step / 2 * 1.001).all()


def test_quantizers_round_as_onnx_quantizelinear_divides():
    """round(x / scale), ties to even: not torch's x * (1 / scale), which rounds some values just past a
    midpoint the other way."""
    scale = 0.05549333983776616
    x = torch.tensor([2.2474803924560547, -3.1908669471740723, 0.5 * scale, 1.5 * scale])
    codes = ((quantize_dequantize(x, scale, 0, -128, 127) / scale).round()).tolist()
    assert codes == np.clip(np.rint(x.numpy() / np.float32(scale)), -128, 127).tolist()
    assert codes[:2] == [41.0, -58.0]  # torch.fake_quantize_per_tensor_affine: 40 and -57
    assert codes[2:] == [0.0, 2.0]
    # Straight-through inside the range, zero outside it.
    x = torch.tensor([0.1, 100.0], requires_grad=True)
    quantize_dequantize(x, 0.1, 0, -128, 127).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]


def test_activation_ranges_are_u8_asymmetric_or_s8_symmetric_with_zero_exact():
    for signed in (False, True):
        quantizer = ActivationQuantizer(FakeQuantScheme(signed_activations=signed)).train()
        quantizer(torch.tensor([-1.0, 3.0]))
        scale, zero_point = quantizer.qparams()
        if signed:
            assert zero_point == 0 and scale == pytest.approx(3.0 / 127)
        else:
            assert scale == pytest.approx(4.0 / 255) and zero_point == round(1.0 / scale)
        assert quantizer.eval()(torch.zeros(1)).item() == 0.0


def test_an_uncalibrated_quantizer_refuses_to_run_in_eval():
    with pytest.raises(RuntimeError, match="calibrate"):
        ActivationQuantizer(U8).eval()(torch.zeros(1))


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_the_qdq_onnx_model_runs_what_the_fake_quantized_model_computes(tmp_path, per_channel):
    """Within one quantization step of the output, both with ONNX Runtime's reference Q/DQ semantics and
    with its fused integer kernels; and the weight initializers are INT8 (a quarter of the float size),
    with one scale per output channel or one per convolution."""
    net = qat_net(FakeQuantScheme(signed_activations=False, weight_bits=WEIGHT_BITS_HERE,
                                  per_channel_weights=per_channel))
    path = export_qdq(net, tmp_path / "qat.onnx")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = net(x).numpy()
    step, _ = net[-2].output_quantizer.qparams()  # the last conv (its batch norm follows)
    for optimize in (False, True):
        assert np.abs(run_ort(path, x.numpy(), optimize) - expected).max() <= step * 1.001
    model = onnx.load(str(path))
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(weights) == 3
    constants = graph_constants(model)
    channels = {w.name: w.dims[0] for w in weights}
    scale_sizes = {n.input[0]: constants[n.input[1]].size for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in channels}
    assert scale_sizes == {name: count if per_channel else 1 for name, count in channels.items()}
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 1 + 2 + 1  # input, activations, output


def test_the_tensorrt_twin_has_signed_symmetric_activations(tmp_path):
    model = onnx.load(str(export_qdq(qat_net(), tmp_path / "twin.onnx", signed=True)))
    constants = graph_constants(model)
    zero_points = [constants[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_the_real_student_is_fully_integer_in_onnx_runtime(tmp_path):
    """Every convolution but the float classifier becomes an integer convolution once ONNX Runtime fuses
    the Q/DQ pattern: the quantizers sit where its fusions need them."""
    config = load_config("configs/smoke.yaml")
    student = build_student(config).eval()
    prepare_qat(student, U8, float_modules=[student.head.classifier])
    calibrate_ranges(student, [torch.randn(4, 3, 48, 48)])
    path = tmp_path / "student.onnx"
    export_onnx(export_ready(student), path, example_shape=(2, 3, 48, 48), opset=17, dynamic=True, argmax=False,
                metadata={}, exporter="torchscript")
    model = onnx.load(str(path))
    fold_weight_quantizers(model)
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    convs = sum(isinstance(m, nn.Conv2d) for m in student.modules())
    assert ops.count("QLinearConv") == convs - 1 and ops.count("Conv") + ops.count("FusedConv") == 1
    # One Q/DQ pair per tensor: no DequantizeLinear feeds a QuantizeLinear (a pair ONNX Runtime would merge
    # into one of a range of its own), so its fused integer model computes what the student computes.
    nodes = onnx.load(str(path)).graph.node
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    assert not [n.name for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] in dequantized]
    x = torch.randn(4, 3, 48, 48)
    with torch.no_grad():
        expected = student(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999
    assert np.quantile(np.abs(got - expected), 0.999) <= 1e-4


def test_the_qat_stage_delivers_validated_int8_models_with_and_without_the_teacher(smoke_copy):
    fast = ["qat.enabled=true", "qat.train.epochs=1", "qat.train.max_steps_per_epoch=4"]
    assert main(["run", "configs/smoke.yaml", "--out", str(smoke_copy), *fast]) == 0
    metrics = json.loads((smoke_copy / "metrics.json").read_text())
    qat, row = metrics["qat"], metrics["backends"]["onnxruntime-int8-qat"]
    assert qat["teacher"] == "teacher" and qat["activation_type"] == "quint8" and qat["steps"] == 4
    assert qat["int8_qat"]["status"] == "ok" and qat["int8_qat"]["weight_initializers_int8"] == qat["quantized_convs"]
    assert row["status"] == "passed" and row["precision"] == "int8" and row["latency_ms"]["p50"] > 0
    assert metrics["backends"]["tensorrt-int8-qat"]["status"] == "skipped"
    assert (smoke_copy / "deploy" / "student_int8_qat.onnx").is_file()
    assert (smoke_copy / "qat_student" / "student_int8_qat_s8s8.onnx").is_file()  # the TensorRT twin
    # Stripped: exactly the plain student's parameters, loaded strictly.
    config = load_config(smoke_copy / "config.yaml")
    fresh = build_student(config)
    fresh.load_state_dict(torch.load(smoke_copy / "qat_student" / "student.pt", weights_only=True), strict=True)
    assert sum(p.numel() for p in fresh.parameters()) == metrics["strip"]["student_params"]

    for learns_from, override in [("none", "qat.teacher=false"), ("float_student", "qat.teacher=float_student")]:
        assert main(["run", "configs/smoke.yaml", "--out", str(smoke_copy), *fast, override]) == 0
        metrics = json.loads((smoke_copy / "metrics.json").read_text())
        assert metrics["qat"]["teacher"] == learns_from
        assert metrics["backends"]["onnxruntime-int8-qat"]["status"] == "passed"


def test_quantization_aware_distillation_learns_the_logits_of_a_frozen_float_copy_of_the_student():
    from pipeline.distill.methods.kd import kd_loss
    from stages.qat_student import float_student_distiller

    config = load_config(ROOT / "configs" / "smoke.yaml", ["qat.teacher=float_student", "qat.ce_weight=0.5"])
    student = build_student(config).eval()
    distiller = float_student_distiller(student, config.qat, ignore_index=255)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, student.num_classes, (2, 32, 32))
    with torch.no_grad():
        _, parts = distiller.eval()(images, labels)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-6)  # before quantization: the same function
    assert parts["ce"].item() > 0 and distiller.ce_weight == 0.5
    prepare_qat(student, U8, [])
    calibrate_ranges(student, [images])
    with torch.no_grad():
        quantized, float_logits = student(images), distiller.teacher(images)
        _, parts = distiller(images, labels)
    assert not torch.equal(quantized, float_logits)  # the copy stayed float; the student is quantized
    # The KD term measures the quantized student against the float copy.
    assert parts["kd"].item() == pytest.approx(kd_loss(quantized, float_logits, config.qat.kd_temperature).item())
    assert not quantizers(distiller.teacher) and all(not p.requires_grad for p in distiller.teacher.parameters())


def test_qat_reads_only_the_students_labelled_images_unless_it_names_its_own_or_reads_no_label():
    from stages.qat_student import qat_train_config

    def qat_images(*overrides: str) -> int | None:
        config = load_config(ROOT / "configs" / "default.yaml", ["student.train.max_images=64", *overrides])
        assert qat_train_config(config).epochs == config.qat.train.epochs  # the rest is qat.train's own
        return qat_train_config(config).max_images

    for reads_labels in (["qat.teacher=teacher"], ["qat.teacher=none"],
                         ["qat.teacher=float_student", "qat.ce_weight=0.5"]):
        assert qat_images(*reads_labels) == 64
        assert qat_images(*reads_labels, "qat.train.max_images=16") == 16
        assert qat_images(*reads_labels, "student.train.max_images=null") is None
    assert qat_images("qat.teacher=float_student", "qat.ce_weight=0") is None  # distillation from FP32 reads no label


class BranchingNet(nn.Module):
    """conv-relu6-conv with data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(3, 4, True), nn.Conv2d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if x.sum() > 0 else -self.body(x)


def test_an_untraceable_model_warns_and_quantizes_every_convolution_input():
    with pytest.warns(UserWarning, match="cannot be traced by torch.fx"):
        net = prepare_qat(BranchingNet(), U8)
    convs = [m for m in net.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 2 and all(c.input_quantizer is not None for c in convs)
    assert all(c.input_range == [c.input_quantizer] for c in convs)
