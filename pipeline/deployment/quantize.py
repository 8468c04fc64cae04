"""Lower-precision ONNX models from the FP32 export: INT8 (explicit Q/DQ) and FP16.

INT8 is ONNX Runtime static quantization in QDQ format, calibrated on real images, with
symmetric per-channel S8 weights. :class:`Int8Recipe` is the whole recipe, with the config's
defaults (``QuantizeConfig``): asymmetric U8 activations (U8S8, the fast kind on x86 CPUs), Resize
and the final classifier kept in float, 7-bit weights where :func:`resolve_reduce_range` says the
CPU needs them. TensorRT needs symmetric S8 activations, so its model is a twin made from the same
recipe by :meth:`Int8Recipe.for_tensorrt`.

Two facts about this graph family shape the recipe: ONNX Runtime's pre-processing cannot read a
``.data`` side file (our export is single-file), and its symbolic shape inference fails on
DeepLab graphs with dynamic H/W, so it is skipped (``skip_symbolic_shape=True``); ONNX shape
inference still runs, and the quantized model keeps the dynamic batch/H/W.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.artifacts import atomic_path
from pipeline.config import DataConfig, QuantizeConfig
from pipeline.deployment.export import LOGITS_NAME, read_metadata

log = logging.getLogger(__name__)

# Below this many calibration images the activation ranges are a guess, not an estimate.
MIN_CALIBRATION_IMAGES = 32
# Ops between the classifier Conv and the graph output that carry no weights (upsampling, casts).
_PASS_THROUGH_OPS = {"Resize", "Upsample", "Cast", "Identity", "Reshape", "Transpose", "Slice"}


class CalibrationWarning(UserWarning):
    """Calibrating on too few images: the INT8 model's accuracy may suffer."""


_CONFIG = QuantizeConfig()  # the recipe's defaults are the config's


@dataclass(frozen=True)
class Int8Recipe:
    """How to quantize. The defaults are ``QuantizeConfig``'s (ONNX Runtime on a CPU with VNNI or
    on ARM); :meth:`from_config` resolves ``reduce_range: auto`` for this CPU."""

    activation_type: str = _CONFIG.activation_type  # "quint8" (U8S8) or "qint8" (S8S8)
    calibrate_method: str = _CONFIG.calibrate_method  # "minmax" | "percentile" | "entropy"
    float_op_types: tuple[str, ...] = _CONFIG.float_op_types  # op types left in float
    float_nodes: tuple[str, ...] = _CONFIG.float_nodes  # node names left in float
    float_classifier: bool = _CONFIG.float_classifier  # keep the final classifier Conv in float
    per_channel: bool = _CONFIG.per_channel  # one weight scale per output channel, else one per tensor
    # 7-bit weights: on x86 CPUs without VNNI, ONNX Runtime's U8S8 kernels add pairs of u8 x s8
    # products in saturating 16-bit lanes, which full-range weights can overflow.
    reduce_range: bool = False
    reduce_range_reason: str = ""  # why, for metrics and the model's metadata
    batch_size: int = 8  # calibration batch

    @classmethod
    def from_config(cls, config: QuantizeConfig) -> "Int8Recipe":
        """The configured recipe, with ``reduce_range`` resolved for the CPU this process runs on."""
        reduce_range, reason = reduce_range_here(config.reduce_range)
        return cls(activation_type=config.activation_type, calibrate_method=config.calibrate_method,
                   float_op_types=config.float_op_types, float_nodes=config.float_nodes,
                   float_classifier=config.float_classifier, per_channel=config.per_channel,
                   reduce_range=reduce_range, reduce_range_reason=reason)

    def for_tensorrt(self) -> "Int8Recipe":
        """The twin TensorRT builds from: symmetric S8 activations (TensorRT's Q/DQ), full-range
        weights (its INT8 kernels do not saturate like ONNX Runtime's VNNI-less x86 ones) and per-channel
        weights (which TensorRT supports on every layer; ``per_channel: false`` is for other targets)."""
        return replace(self, activation_type="qint8", reduce_range=False, per_channel=True,
                       reduce_range_reason="TensorRT twin: always full-range weights")


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def reduce_range_here(setting: bool | str) -> tuple[bool, str]:
    """:func:`resolve_reduce_range` for the CPU this process runs on."""
    import platform

    from pipeline.environment import cpu_flags

    return resolve_reduce_range(setting, cpu_flags(), platform.machine())


def resolve_reduce_range(setting: bool | str, flags: frozenset[str] | None, machine: str) -> tuple[bool, str]:
    """(7-bit weights?, why) for ``quantize.reduce_range`` on a CPU with these /proc/cpuinfo
    ``flags`` (None: unknown) and this architecture (``platform.machine()``).

    ONNX Runtime's x86 U8S8 kernels without VNNI multiply u8 x s8 pairs into saturating 16-bit
    sums (vpmaddubsw), which full-range weights can overflow; with VNNI the dot product
    accumulates in 32 bits, and ARM's kernels widen before they add, so full range is exact there.
    """
    if setting is True:
        return True, "quantize.reduce_range=true in the config"
    if setting is False:
        return False, "quantize.reduce_range=false in the config"
    machine = machine.lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False, f"auto: {machine} CPU, whose INT8 kernels do not saturate: full-range weights"
    if flags is None:
        return True, "auto: x86 CPU whose flags are unknown (no /proc/cpuinfo): 7-bit weights, safe everywhere"
    present = [flag for flag in VNNI_FLAGS if flag in flags]
    if present:
        return False, f"auto: this x86 CPU has VNNI ({', '.join(present)}): full-range weights"
    return True, ("auto: this x86 CPU has no VNNI (avx512_vnni, avx_vnni), so ONNX Runtime's U8S8 kernels add "
                  "in saturating 16-bit lanes: 7-bit weights")


def calibration_warning(count: int) -> str | None:
    """The warning text when ``count`` calibration images are too few, else None."""
    if count < MIN_CALIBRATION_IMAGES:
        return (f"INT8 calibration uses only {count} images (< {MIN_CALIBRATION_IMAGES}); activation ranges may be "
                f"poor and accuracy may drop. Raise quantize.calibration_images.")
    return None


class _ArrayReader:
    """An ONNX Runtime CalibrationDataReader over an (N, 3, H, W) float32 array, in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        # A static model takes only full batches: the last one is dropped rather than padded.
        if len(images) >= batch_size:
            images = images[: len(images) - len(images) % batch_size]
        self.input_name = input_name
        self.batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        self._iter: Iterator[np.ndarray] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self._iter = iter(self.batches)


def classifier_nodes(model: onnx.ModelProto, output_name: str = LOGITS_NAME) -> list[str]:
    """Names of the Conv/Gemm node(s) that produce ``output_name`` through weight-free ops only."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    frontier = [output_name]
    seen: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        node = producers.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            found.append(node.name)
        elif node.op_type in _PASS_THROUGH_OPS | {"Add"}:
            frontier.extend(node.input[:1])  # follow the data input, not scales/shapes
    return found


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The input's batch size when the model was exported with static shapes, else None."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def read_calibration_images(data: DataConfig, count: int) -> np.ndarray:
    """The first ``count`` training images without augmentation, in the model's input normalisation:
    what the quantize stage calibrates on (and what re-quantizing a run must use to get its model)."""
    from pipeline.data import build_dataset

    dataset = build_dataset(data, "train", augment=False)
    count = min(count, len(dataset))
    return np.stack([dataset[i][0].numpy() for i in range(count)]).astype(np.float32)


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, recipe: Int8Recipe = Int8Recipe()) -> dict[str, Any]:
    """Write the Q/DQ INT8 model of ``src`` to ``dst``; returns what was done (for metrics).

    ``calibration`` is (N, 3, H, W) float32, already normalised like the model's inputs.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src, dst = Path(src), Path(dst)
    warning = _check_calibration(calibration)
    settings = _QuantizerSettings.of(recipe)
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        prepared = _prepare(src, Path(scratch))
        model = onnx.load(str(prepared))
        excluded = _excluded_nodes(model, recipe)
        with atomic_path(dst) as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                _ArrayReader(model.graph.input[0].name, calibration, fixed_batch(model) or recipe.batch_size),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=settings.op_types,
                per_channel=recipe.per_channel,
                activation_type=settings.activation,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=settings.method,
                reduce_range=recipe.reduce_range,
                calibration_providers=["CPUExecutionProvider"],
                extra_options=settings.extra_options,
            )
            _finish(tmp, src, recipe, len(calibration))
    return _summary(dst, recipe, len(calibration), warning, excluded)


@dataclass(frozen=True)
class Int8Calibration:
    """The expensive half of :func:`quantize_int8`, done once: the FP32 model as ONNX Runtime's
    quantizer prepares it, and the activation ranges measured on the calibration images. The ranges
    do not depend on which nodes are left in float, so :func:`quantize_calibrated` can write many
    INT8 variants from one calibration (per-layer sensitivity) without running the images again."""

    source: Path  # the FP32 model (its metadata is carried over)
    prepared: Path  # quant_pre_process output, inside the caller's working folder
    ranges: Any  # onnxruntime.quantization.calibrate.TensorsData
    recipe: Int8Recipe
    images: int
    warning: str | None

    def excluded_nodes(self) -> list[str]:
        """The nodes the recipe itself keeps in float (``float_nodes`` and the classifier)."""
        return _excluded_nodes(onnx.load(str(self.prepared), load_external_data=False), self.recipe)


def calibrate_int8(src: Path, calibration: np.ndarray, recipe: Int8Recipe, workdir: Path) -> Int8Calibration:
    """Prepare ``src`` in ``workdir`` and measure its activation ranges as ``quantize_static`` would."""
    from onnxruntime.quantization.calibrate import create_calibrator

    warning = _check_calibration(calibration)
    settings = _QuantizerSettings.of(recipe)
    workdir = Path(workdir)
    prepared = _prepare(Path(src), workdir)
    model = onnx.load(str(prepared))
    # The same calibrator quantize_static creates for our arguments (none of its Calib* options is set).
    calibrator = create_calibrator(prepared, settings.op_types, augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=settings.method, use_external_data_format=False,
                                   providers=["CPUExecutionProvider"], extra_options={})
    calibrator.collect_data(_ArrayReader(model.graph.input[0].name, calibration,
                                         fixed_batch(model) or recipe.batch_size))
    ranges = calibrator.compute_data()
    del calibrator  # it holds an InferenceSession on the augmented model
    return Int8Calibration(Path(src), prepared, ranges, recipe, len(calibration), warning)


def quantize_calibrated(calibrated: Int8Calibration, dst: Path, *, extra_float_nodes: Sequence[str] = (),
                        only_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """Write an INT8 model of ``calibrated`` to ``dst`` from its stored ranges: with no arguments the
    model :func:`quantize_int8` writes for the same recipe and images; ``extra_float_nodes`` are also
    kept in float; ``only_nodes``, when given, are the only nodes quantized (the recipe's float nodes
    stay float). Returns what :func:`quantize_int8` returns."""
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer, update_opset_version
    from onnxruntime.quantization.quantize import check_static_quant_arguments

    recipe, dst = calibrated.recipe, Path(dst)
    settings = _QuantizerSettings.of(recipe)
    excluded = calibrated.excluded_nodes()
    excluded += [name for name in extra_float_nodes if name not in excluded]
    # What quantize_static does once the ranges are known (QDQ format, our fixed arguments).
    model = update_opset_version(load_model_with_shape_infer(calibrated.prepared), QuantType.QInt8,
                                 settings.activation)
    check_static_quant_arguments(QuantFormat.QDQ, settings.activation, QuantType.QInt8)
    quantizer = QDQQuantizer(model, recipe.per_channel, recipe.reduce_range, QuantType.QInt8,
                             settings.activation, calibrated.ranges, list(only_nodes), excluded, settings.op_types,
                             settings.extra_options)
    quantizer.quantize_model()
    with atomic_path(dst) as tmp:
        quantizer.model.save_model_to_file(str(tmp), False)
        _finish(tmp, calibrated.source, recipe, calibrated.images)
    return _summary(dst, recipe, calibrated.images, calibrated.warning, excluded)


@dataclass(frozen=True)
class _QuantizerSettings:
    """The recipe in ONNX Runtime's terms, shared by the one-shot and the calibrate-once paths."""

    activation: Any  # QuantType
    method: Any  # CalibrationMethod
    op_types: list[str]
    extra_options: dict[str, Any]

    @classmethod
    def of(cls, recipe: Int8Recipe) -> "_QuantizerSettings":
        from onnxruntime.quantization import CalibrationMethod, QuantType

        return cls(
            activation={"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[recipe.activation_type],
            method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy}[recipe.calibrate_method],
            op_types=quantized_op_types(recipe),
            # S8 activations (TensorRT) must be symmetric; U8 ones (ONNX Runtime CPU) are asymmetric,
            # which uses the whole range for ReLU outputs and lets ORT fold ReLU/Clip into the
            # preceding Conv's quantisation instead of running them in float.
            extra_options={"ActivationSymmetric": recipe.activation_type == "qint8", "WeightSymmetric": True},
        )


def quantized_op_types(recipe: Int8Recipe) -> list[str]:
    """The op types the recipe lets ONNX Runtime quantize: every one it can in QDQ format, less ``float_op_types``."""
    from onnxruntime.quantization.registry import QDQRegistry

    return sorted(t for t in QDQRegistry if t not in set(recipe.float_op_types))


def _check_calibration(calibration: np.ndarray) -> str | None:
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration images must be a non-empty (N, 3, H, W) array, got shape {calibration.shape}")
    warning = calibration_warning(len(calibration))
    if warning:
        warnings.warn(warning, CalibrationWarning, stacklevel=3)
    return warning


def _prepare(src: Path, scratch: Path) -> Path:
    from onnxruntime.quantization import quant_pre_process

    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    return prepared


def _excluded_nodes(prepared: onnx.ModelProto, recipe: Int8Recipe) -> list[str]:
    excluded = list(recipe.float_nodes)
    if recipe.float_classifier:
        excluded += classifier_nodes(prepared)
    return excluded


def _finish(path: Path, src: Path, recipe: Int8Recipe, images: int) -> None:
    """Give the quantized model at ``path`` the source's metadata and how it was quantized; check it."""
    quantized = onnx.load(str(path))
    props = read_metadata(src)
    if recipe.reduce_range_reason:
        props["int8_weight_range"] = ("7-bit" if recipe.reduce_range else "8-bit") + f" ({recipe.reduce_range_reason})"
    activation_symmetry = "symmetric" if recipe.activation_type == "qint8" else "asymmetric"
    weights = "per-channel" if recipe.per_channel else "per-tensor"
    props.update(precision="int8", quantization=(
        f"onnxruntime static QDQ, S8 weights {weights} symmetric{' (7-bit range)' if recipe.reduce_range else ''}, "
        f"{recipe.activation_type} activations "
        f"{activation_symmetry}, {recipe.calibrate_method} calibration on {images} images"))
    _replace_metadata(quantized, props)
    onnx.save_model(quantized, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path))


def _summary(dst: Path, recipe: Int8Recipe, images: int, warning: str | None, excluded: list[str]) -> dict[str, Any]:
    counts = op_counts(onnx.load(str(dst), load_external_data=False))
    return {
        "calibration_images": int(images),
        "calibration_warning": warning,
        "activation_type": recipe.activation_type,
        "weight_type": "qint8",
        "per_channel": recipe.per_channel,
        "symmetric": True,  # weights
        "reduce_range": recipe.reduce_range,
        "reduce_range_reason": recipe.reduce_range_reason,
        "activations": "symmetric" if recipe.activation_type == "qint8" else "asymmetric",
        "calibrate_method": recipe.calibrate_method,
        "float_op_types": list(recipe.float_op_types),
        "float_nodes": excluded,
        "quantize_linear_nodes": counts.get("QuantizeLinear", 0),
        "dequantize_linear_nodes": counts.get("DequantizeLinear", 0),
    }


def convert_fp16(src: Path, dst: Path, block_op_types: Sequence[str] = ()) -> dict[str, Any]:
    """Write the FP16 model of ``src`` to ``dst``; inputs and outputs stay float32 (keep_io_types),
    so callers feed and read the same arrays as for the FP32 model."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(block_op_types))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    _save_converted(half, model, dst, precision="fp16",
                    conversion="onnxruntime.transformers.float16, keep_io_types=True")
    return {"keep_io_types": True, "op_block_list": list(block_op_types)}


def _save_converted(converted: onnx.ModelProto, original: onnx.ModelProto, dst: Path, **props: str) -> None:
    """Save a float16 conversion of ``original``: graph order restored, metadata kept and updated, checked."""
    # The converter appends the input Casts after their consumers; the checker wants graph order.
    _sort_topologically(converted.graph)
    _replace_metadata(converted, {**{p.key: p.value for p in original.metadata_props}, **props})
    with atomic_path(dst) as tmp:
        onnx.save_model(converted, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp))


QDQ_FP16_OPSET = 19  # the first opset whose QuantizeLinear / DequantizeLinear take float16 scales


def qdq_float_parts_to_fp16(path: Path) -> dict[str, Any]:
    """Rewrite a Q/DQ INT8 model so that everything outside the quantized convolutions is FP16.

    TensorRT builds only strongly typed networks (11; 10 as this project asks it to): a layer runs in
    the type the ONNX gives it, so a Q/DQ model with float32 elsewhere (Resize, the layers left in
    float) gives an INT8 + FP32 engine. Converting the float parts with ONNX Runtime's float16
    converter, Q/DQ nodes included (their scales become FP16, allowed from opset 19), makes every
    DequantizeLinear feed its Conv directly in FP16, so TensorRT still fuses Q/DQ into INT8 convs and
    runs the rest in FP16. Inputs and outputs stay float32.
    """
    from onnx import version_converter
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < QDQ_FP16_OPSET:
        model = version_converter.convert_version(model, QDQ_FP16_OPSET)
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST))
    _save_converted(half, model, path, float_precision="fp16",
                    conversion="onnxruntime.transformers.float16 outside Q/DQ, keep_io_types")
    return {"float_precision": "fp16", "opset": max(opset, QDQ_FP16_OPSET)}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input nobody produces; cannot order it")
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [n for n in pending if not any(n is r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def _replace_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
