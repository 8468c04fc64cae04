"""INT8 Q/DQ and FP16 models from a dynamic FP32 export; the bench command on any ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from pipeline.deployment.export import export_onnx, read_metadata
from pipeline.deployment.quantize import (
    CalibrationWarning,
    Int8Recipe,
    calibrate_int8,
    classifier_nodes,
    convert_fp16,
    qdq_float_parts_to_fp16,
    quantize_calibrated,
    quantize_int8,
    resolve_reduce_range,
)
from pipeline.orchestration.cli import main
from stages.export_onnx import simplify_if_equivalent
from tests.test_export import toy_net


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("q") / "toy.onnx"
    return export_onnx(toy_net(), path, example_shape=(2, 3, 32, 32), opset=18, dynamic=True, argmax=False,
                       metadata={"input_size": [32, 32]})


def calibration(count: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((count, 3, 32, 32)).astype(np.float32)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def test_int8_model_is_symmetric_per_channel_qdq_and_keeps_dynamic_shapes(fp32_file, tmp_path):
    dst = tmp_path / "int8.onnx"
    info = quantize_int8(fp32_file, dst, calibration(32), Int8Recipe(activation_type="qint8"))
    model = onnx.load(str(dst))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 2]
    assert zero_points and all(np.all(z == 0) for z in zero_points)  # symmetric, signed
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert any(s.size > 1 for s in scales)  # per-channel weights
    assert read_metadata(dst)["precision"] == "int8" and info["calibration_images"] == 32
    for shape in ((1, 3, 32, 32), (2, 3, 48, 64)):
        x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        assert run(dst, x).shape == run(fp32_file, x).shape


def weight_scale_sizes(path: Path) -> list[int]:
    """The scale size of every DequantizeLinear of a weight (a 4-d INT8 initializer)."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[1]].size for n in model.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in inits and inits[n.input[0]].ndim == 4]


def test_per_tensor_weights_have_one_scale_per_layer_in_both_quantize_paths(fp32_file, tmp_path):
    recipe = Int8Recipe(per_channel=False)
    info = quantize_int8(fp32_file, tmp_path / "one_shot.onnx", calibration(16), recipe)
    (tmp_path / "work").mkdir()
    calibrated = calibrate_int8(fp32_file, calibration(16), recipe, tmp_path / "work")
    quantize_calibrated(calibrated, tmp_path / "calibrated.onnx")
    for path in (tmp_path / "one_shot.onnx", tmp_path / "calibrated.onnx"):
        sizes = weight_scale_sizes(path)
        assert sizes and set(sizes) == {1}
        assert "per-tensor" in read_metadata(path)["quantization"]
    assert info["per_channel"] is False
    quantize_int8(fp32_file, tmp_path / "per_channel.onnx", calibration(16), Int8Recipe())
    assert max(weight_scale_sizes(tmp_path / "per_channel.onnx")) > 1  # the default, for contrast
    # TensorRT's twin keeps per-channel weights whatever the target's setting.
    assert recipe.for_tensorrt().per_channel


def test_the_tensorrt_int8_model_is_int8_convs_and_fp16_everywhere_else(fp32_file, tmp_path):
    # A strongly typed TensorRT network runs each layer in the ONNX's type: FP32 left outside the
    # Q/DQ pairs would make an INT8 + FP32 engine.
    dst = tmp_path / "twin.onnx"
    info = quantize_int8(fp32_file, dst, calibration(32), Int8Recipe().for_tensorrt())  # the pipeline's twin
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    before = run(dst, x)
    assert qdq_float_parts_to_fp16(dst) == {"float_precision": "fp16", "opset": 19}
    model = onnx.shape_inference.infer_shapes(onnx.load(str(dst)))
    producer = {out: node for node in model.graph.node for out in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv" and node.name not in info["float_nodes"]]
    assert convs and all(producer[node.input[0]].op_type == "DequantizeLinear" for node in convs)
    assert all(producer[node.input[1]].op_type == "DequantizeLinear" for node in convs)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    inner = [v for v in model.graph.value_info if v.type.tensor_type.elem_type in floats]
    assert inner and all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in inner), \
        [v.name for v in inner if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]  # float32 I/O
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    after = run(dst, x)
    assert (after.argmax(1) == before.argmax(1)).mean() > 0.95
    assert read_metadata(dst)["precision"] == "int8" and read_metadata(dst)["float_precision"] == "fp16"


def test_onnxruntime_int8_has_symmetric_weights_and_asymmetric_u8_activations(fp32_file, tmp_path):
    """Asymmetric U8 activations use the whole range for ReLU outputs (and let ONNX Runtime fold
    ReLU/Clip into the quantised Conv); the weights stay symmetric per channel."""
    dst = tmp_path / "int8_u8.onnx"
    info = quantize_int8(fp32_file, dst, calibration(32), Int8Recipe(activation_type="quint8"))
    model = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 2]
    weights = [z for z in zero_points if z.dtype == np.int8]
    activations = [z for z in zero_points if z.dtype == np.uint8]
    assert weights and all(np.all(z == 0) for z in weights)
    assert activations and any(np.any(z != 128) for z in activations)
    assert info["activations"] == "asymmetric" and read_metadata(dst)["quantization"].count("asymmetric") == 1


def test_reduce_range_keeps_int8_weights_within_seven_bits(fp32_file, tmp_path):
    """For x86 CPUs without VNNI, whose U8S8 kernels saturate 16-bit sums of full-range products."""
    def weight_extremes(recipe: Int8Recipe) -> tuple[int, int]:
        dst = tmp_path / f"int8_{recipe.reduce_range}.onnx"
        info = quantize_int8(fp32_file, dst, calibration(32), recipe)
        assert info["reduce_range"] is recipe.reduce_range
        weights = [numpy_helper.to_array(i) for i in onnx.load(str(dst)).graph.initializer
                   if i.data_type == onnx.TensorProto.INT8 and numpy_helper.to_array(i).size > 1]
        return min(int(w.min()) for w in weights), max(int(w.max()) for w in weights)

    assert weight_extremes(Int8Recipe(activation_type="quint8")) == (-127, 127)
    low, high = weight_extremes(Int8Recipe(activation_type="quint8", reduce_range=True))
    assert -64 <= low and high <= 64 and (low, high) != (0, 0)


AVX2_EPYC = frozenset({"sse4_2", "avx", "avx2", "fma"})
ZEN5_EPYC = AVX2_EPYC | {"avx512f", "avx512bw", "avx512_vnni", "avx_vnni"}


@pytest.mark.parametrize("flags, machine, seven_bit, says", [
    (AVX2_EPYC, "x86_64", True, "no VNNI"),
    (ZEN5_EPYC, "x86_64", False, "has VNNI (avx512_vnni, avx_vnni)"),
    (AVX2_EPYC | {"avx_vnni"}, "x86_64", False, "has VNNI (avx_vnni)"),
    (None, "x86_64", True, "flags are unknown"),
    (frozenset({"asimd", "asimddp"}), "aarch64", False, "aarch64 CPU"),
])
def test_auto_reduce_range_uses_seven_bit_weights_exactly_on_x86_without_vnni(flags, machine, seven_bit, says):
    chosen, reason = resolve_reduce_range("auto", flags, machine)
    assert chosen is seven_bit and reason.startswith("auto: ") and says in reason


def test_an_explicit_reduce_range_wins_over_the_cpu():
    assert resolve_reduce_range(True, ZEN5_EPYC, "x86_64")[0] is True
    assert resolve_reduce_range(False, AVX2_EPYC, "x86_64")[0] is False


def test_the_weight_range_and_its_reason_are_in_the_model_metadata(fp32_file, tmp_path):
    dst = tmp_path / "int8_reason.onnx"
    recipe = Int8Recipe(activation_type="quint8", reduce_range=True, reduce_range_reason="auto: no VNNI here")
    info = quantize_int8(fp32_file, dst, calibration(32), recipe)
    assert info["reduce_range_reason"] == "auto: no VNNI here"
    assert read_metadata(dst)["int8_weight_range"] == "7-bit (auto: no VNNI here)"


def test_few_calibration_images_warn_and_are_recorded(fp32_file, tmp_path):
    with pytest.warns(CalibrationWarning, match="only 4 images"):
        info = quantize_int8(fp32_file, tmp_path / "int8.onnx", calibration(4))
    assert "calibration_images" in info["calibration_warning"]


def test_classifier_and_resize_can_stay_in_float(fp32_file, tmp_path):
    assert classifier_nodes(onnx.load(str(fp32_file)))  # the final Conv is found through the Resize
    dst = tmp_path / "int8.onnx"
    info = quantize_int8(fp32_file, dst, calibration(32), Int8Recipe(float_op_types=("Resize",), float_classifier=True))
    model = onnx.load(str(dst))
    producers = {o: n for n in model.graph.node for o in n.output}
    classifier = next(n for n in model.graph.node if n.name in info["float_nodes"])
    assert producers.get(classifier.input[1]) is None or producers[classifier.input[1]].op_type != "DequantizeLinear"
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    assert producers[resize.input[0]].op_type != "DequantizeLinear"


def test_fp16_model_keeps_float32_io_and_matches(fp32_file, tmp_path):
    dst = tmp_path / "fp16.onnx"
    convert_fp16(fp32_file, dst)
    model = onnx.load(str(dst))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert read_metadata(dst)["precision"] == "fp16"
    x = calibration(2)
    np.testing.assert_allclose(run(dst, x), run(fp32_file, x), atol=2e-2)


def test_simplification_is_kept_only_with_parity(fp32_file, tmp_path):
    copy = tmp_path / "m.onnx"
    copy.write_bytes(fp32_file.read_bytes())
    record = simplify_if_equivalent(copy, 32, atol=1e-4)
    assert record["simplified"] is True and record["max_abs_diff"] <= 1e-4
    onnx.checker.check_model(str(copy), full_check=True)
    rejected = tmp_path / "r.onnx"
    rejected.write_bytes(fp32_file.read_bytes())
    record = simplify_if_equivalent(rejected, 32, atol=-1.0)  # no graph can meet this: the original must stay
    assert record["simplified"] is False and rejected.read_bytes() == fp32_file.read_bytes()


def test_bench_cli_times_any_onnx_file_and_writes_the_table(fp32_file, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", str(fp32_file), "--shape", "1x3x32x32", "--shape", "2x3x48x48", "--warmup", "1",
               "--min-iters", "3", "--min-seconds", "0", "--threads", "1", "--out", str(out),
               "--providers", "CPUExecutionProvider", "CUDAExecutionProvider"])
    assert rc == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    timed = [r for r in rows if r["status"] == "passed"]
    assert [r["input_shape"] for r in timed] == ["1x3x32x32", "2x3x48x48"]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in timed)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        skipped = [r for r in rows if r["status"] == "skipped"]
        assert skipped and all("CUDAExecutionProvider" in r["reason"] for r in skipped)
    assert (out / "bench.csv").read_text().startswith("key,status,")
    assert "p99 ms" in capsys.readouterr().out


def test_bench_cli_uses_metadata_size_and_explains_bad_shapes(fp32_file, capsys):
    assert main(["bench", str(fp32_file), "--min-iters", "1", "--warmup", "0", "--min-seconds", "0"]) == 0
    assert "1x3x32x32" in capsys.readouterr().out  # from metadata input_size
    assert main(["bench", str(fp32_file), "--shape", "1x3xabc"]) == 2
    assert "not a shape" in capsys.readouterr().err
    assert main(["bench", "missing.onnx"]) == 2


def test_the_recipe_defaults_are_the_configs_and_the_tensorrt_twin_is_a_function_of_the_recipe():
    from pipeline.config import QuantizeConfig

    config, recipe = QuantizeConfig(), Int8Recipe()
    for key in ("activation_type", "calibrate_method", "float_op_types", "float_nodes", "float_classifier"):
        assert getattr(recipe, key) == getattr(config, key), key
    configured = Int8Recipe.from_config(config.model_copy(update={"reduce_range": True, "float_nodes": ("n1",)}))
    assert configured.reduce_range and configured.float_nodes == ("n1",)
    twin = configured.for_tensorrt()
    assert (twin.activation_type, twin.reduce_range) == ("qint8", False)
    assert twin.float_nodes == ("n1",) and twin.calibrate_method == configured.calibrate_method
