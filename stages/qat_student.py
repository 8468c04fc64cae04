"""Stage: quantization-aware fine-tuning of the distilled student, and its Q/DQ ONNX models.

The distilled student (with its distillation heads, against the frozen teacher, through the same
method slot; or from its own FP32 logits with ``qat.teacher: float_student``; or alone with CE
when ``qat.teacher`` is none) gets fake quantization matching the INT8 recipe
(``pipeline/deployment/fake_quant.py``): symmetric S8 weights, per channel unless
``quantize.per_channel`` is false (7-bit where ``quantize.reduce_range`` resolves so on this CPU),
U8 or S8 activations, the classifier in float. Ranges start from the calibration images, then
follow training. The fine-tuned student is
exported as exactly the graph trained: ``student_int8_qat.onnx`` for ONNX Runtime, and where a
TensorRT INT8 engine is asked for, a twin with S8 symmetric activations (the same ranges) and FP16
outside the quantized convolutions. ``student.pt`` holds the plain student's weights (strict-loadable
into a fresh student), ``ranges.pt`` the activation ranges.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from pipeline import metrics_contract as keys
from pipeline.artifacts import atomic_path, atomic_torch_save
from pipeline.builders import build_distiller, build_student, build_teacher
from pipeline.config import MethodSpec, PipelineConfig, QatConfig, TrainConfig
from pipeline.data import dataset_info
from pipeline.deployment.export import export_onnx, read_metadata
from pipeline.deployment.fake_quant import (
    FakeQuantScheme,
    calibrate_ranges,
    export_ready,
    fold_weight_quantizers,
    prepare_qat,
    quant_convs,
    quantizer_state,
    strip_quantizers,
)
from pipeline.deployment.quantize import Int8Recipe, op_counts, qdq_float_parts_to_fp16, reduce_range_here
from pipeline.distill.distiller import Distiller, feature_info
from pipeline.distill.registry import build_method
from pipeline.model_files import ModelFile
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.status import Status
from pipeline.training import SupervisedObjective
from stages.common import TRAINING_KEYS, load_centers, run_training
from stages.deployables import calibration_images, needs_tensorrt_twin

QAT_NAME = "student_int8_qat.onnx"
QAT_TENSORRT_NAME = "student_int8_qat_s8s8.onnx"
CALIBRATION_BATCH = 16
LEARNS_FROM = {"teacher": "with the teacher", "float_student": "distilled from the FP32 student", "none": "CE only"}


def scheme_for(ctx: StageContext) -> FakeQuantScheme:
    recipe = Int8Recipe.from_config(ctx.config.quantize)
    activation = ctx.config.qat.activation_type
    if activation == "auto":
        activation = recipe.activation_type
    return FakeQuantScheme(signed_activations=activation == "qint8", weight_bits=7 if recipe.reduce_range else 8,
                           per_channel_weights=recipe.per_channel)


def qat_train_config(config: PipelineConfig) -> TrainConfig:
    """``qat.train``, on the images the student was given labels for (``student.train.max_images``)
    when the QAT objective reads labels, unless it names its own: a student made from 64 labels is
    fine-tuned on those 64, not on the teacher's. Distillation from the float student alone reads no
    label, so it learns from every training image."""
    train = config.qat.train
    if train.max_images is None and config.qat.reads_labels and config.student.train.max_images is not None:
        return train.model_copy(update={"max_images": config.student.train.max_images})
    return train


def float_modules(student: nn.Module, config_float_classifier: bool) -> list[nn.Module]:
    """The final classifier convolution(s), kept in float as the post-training recipe keeps them."""
    if not config_float_classifier:
        return []
    return [m for name, m in student.named_modules() if name.rsplit(".", 1)[-1] == "classifier"]


def objective_for(ctx: StageContext) -> tuple[nn.Module, nn.Module]:
    """(what trains, the student inside it), loaded from the distilled run; ``qat.teacher`` picks what
    the quantized student learns from."""
    config = ctx.config
    teacher = build_teacher(config)
    distiller = build_distiller(config, teacher, build_student(config), artifacts=load_centers(ctx))
    distiller.load_state_dict(torch.load(ctx.input_path("distill_student", "weights"), map_location="cpu",
                                         weights_only=True), strict=True)
    student = distiller.student
    ignore_index = dataset_info(config.data).ignore_index
    if config.qat.teacher == "teacher":  # the distiller's state holds the teacher and the methods' trained heads
        return distiller, student
    if config.qat.teacher == "float_student":
        return float_student_distiller(student, config.qat, ignore_index), student
    return SupervisedObjective(student, ignore_index=ignore_index), student


def float_student_distiller(student: nn.Module, qat: QatConfig, ignore_index: int) -> Distiller:
    """Quantization-aware distillation as in NVIDIA Model Optimizer: the student to be fake-quantized
    learns the logits of a frozen copy of itself in FP32 (made here, before any quantizer is
    inserted), so QAT pulls the INT8 model towards the FP32 model it must match."""
    float_student = copy.deepcopy(student).eval()
    info = feature_info(student)
    kd = build_method(MethodSpec(name="kd", temperature=qat.kd_temperature), info, info)
    return Distiller(student, float_student, [(1.0, kd)], ce_weight=qat.ce_weight, ignore_index=ignore_index)


def export_qat(student: nn.Module, dst: Path, ctx: StageContext, scheme: FakeQuantScheme) -> dict[str, Any]:
    """Write the Q/DQ ONNX model of the fake-quantized ``student`` in ``scheme``'s formats (the trained
    ranges re-expressed as S8 symmetric for TensorRT), with INT8 weight initializers; returns its
    metrics entry."""
    signed = scheme.signed_activations
    ready = export_ready(student, signed_activations=signed)
    config = ctx.config
    size = config.data.image_size
    props = read_metadata(ctx.input_path("export_onnx", "onnx"))
    weights = "per-channel" if scheme.per_channel_weights else "per-tensor"
    props.update(precision="int8", quantization=(
        f"quantization-aware ({LEARNS_FROM[config.qat.teacher]}), S8 weights {weights} "
        f"symmetric ({scheme.weight_bits}-bit range), {'S8 symmetric' if signed else 'U8 asymmetric'} activations"))
    # torch.export cannot trace the fake-quantize ops under symbolic shapes (torch 2.14): TorchScript does.
    export_onnx(ready, dst, example_shape=(2 if config.export.dynamic else 1, 3, size, size),
                opset=config.export.opset, dynamic=config.export.dynamic, argmax=config.export.argmax,
                metadata=props, exporter="torchscript")
    model = onnx.load(str(dst))
    folded = fold_weight_quantizers(model)
    with atomic_path(dst) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp))
    counts = op_counts(model)
    return {"status": Status.OK, "activations": "qint8 symmetric" if signed else "quint8 asymmetric",
            "weight_bits": scheme.weight_bits, "weight_initializers_int8": folded,
            "quantize_linear_nodes": counts.get("QuantizeLinear", 0),
            "dequantize_linear_nodes": counts.get("DequantizeLinear", 0)}


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    scheme = scheme_for(ctx)
    objective, student = objective_for(ctx)
    prepare_qat(student, scheme, float_modules(student, config.quantize.float_classifier))
    images = torch.from_numpy(calibration_images(ctx))
    calibrate_ranges(student, images.split(CALIBRATION_BATCH))
    result = run_training(ctx, objective, qat_train_config(config), keys.QAT, "qat")

    student_state = {k: v.cpu() for k, v in student.state_dict().items()}
    atomic_torch_save(strip_quantizers(student_state), ctx.dir / "student.pt")
    atomic_torch_save(quantizer_state(student_state), ctx.dir / "ranges.pt")
    summary = result.metrics[keys.QAT]
    summary.update(teacher=config.qat.teacher, activation_type="qint8" if scheme.signed_activations else "quint8",
                   weight_bits=scheme.weight_bits, per_channel_weights=scheme.per_channel_weights,
                   quantized_convs=len(quant_convs(student)),
                   weight_bits_reason=reduce_range_here(config.quantize.reduce_range)[1])
    jobs = [("int8_qat", QAT_NAME, scheme.signed_activations)]
    if needs_tensorrt_twin(ctx):
        jobs.append(("int8_qat_tensorrt", QAT_TENSORRT_NAME, True))
    files = []
    for label, name, signed in jobs:
        try:
            entry = export_qat(student, ctx.dir / name, ctx, replace(scheme, signed_activations=signed))
            if label == "int8_qat_tensorrt":
                entry.update(qdq_float_parts_to_fp16(ctx.dir / name))
            entry.update(path=f"{ctx.stage.name}/{name}", size_bytes=(ctx.dir / name).stat().st_size)
            result.outputs[label] = name
        except Exception as exc:  # noqa: BLE001 - recorded as "export failed" for every backend using it
            print(f"[qat_student] {label} FAILED: {type(exc).__name__}: {exc}")
            entry = {"status": Status.EXPORT_FAILED, "reason": f"{type(exc).__name__}: {exc}"[:1000]}
        summary[label] = entry
        files.append(ModelFile.from_metrics(label, "onnx", "int8", entry))
    if not needs_tensorrt_twin(ctx):
        files.append(ModelFile.skipped("int8_qat_tensorrt", "no TensorRT int8 engine requested "
                                                            "(engine.enabled / engine.precisions)"))
    result.outputs.update(student="student.pt", ranges="ranges.pt")
    return StageResult(outputs=result.outputs, metrics=result.metrics, model_files=tuple(files))


STAGE = Stage(
    name="qat_student",
    run=run,
    inputs=("train_teacher", "teacher_centers", "distill_student", "export_onnx"),
    config_keys=(*TRAINING_KEYS, "student", "distill", "teacher.model", "qat", "quantize", "export",
                 "engine.enabled", "engine.precisions"),
    machine=lambda config: {"reduce_range": reduce_range_here(config.quantize.reduce_range)[0]},
    enabled=lambda config: config.qat.enabled,
    description="quantization-aware fine-tune of the distilled student (with the teacher); Q/DQ ONNX models",
)
