"""Stage: INT8 (ONNX Runtime static Q/DQ) and FP16 ONNX models from the FP32 export.

Each file is produced independently; one that fails is recorded as ``export failed`` with the
error (and every backend that needs it reports that status) instead of stopping the run. Each is
also returned as a :class:`ModelFile` record; one the config leaves out is recorded as ``skipped``.
Calibration uses ``quantize.calibration_images`` training images without augmentation, in the
model's input normalisation; fewer than 32 gives a warning, printed and recorded.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import metrics_contract as keys
from pipeline.deployment.quantize import (
    Int8Recipe,
    convert_fp16,
    qdq_float_parts_to_fp16,
    quantize_int8,
    read_calibration_images,
    reduce_range_here,
)
from pipeline.model_files import ModelFile
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.status import Status

INT8_NAME = "student_int8.onnx"
INT8_TENSORRT_NAME = "student_int8_s8s8.onnx"  # signed activations (TensorRT's Q/DQ), FP16 elsewhere
FP16_NAME = "student_fp16.onnx"
PRECISIONS = {"int8": "int8", "int8_tensorrt": "int8", "fp16": "fp16"}  # model file key -> precision
# Why an output was not made when the config did not ask for it (what validate and benchmark report).
NOT_ASKED = {"int8": "quantize.int8 is off in the config", "fp16": "quantize.fp16 is off in the config",
             "int8_tensorrt": "no TensorRT int8 engine requested (engine.enabled / engine.precisions)"}


def calibration_images(ctx: StageContext) -> np.ndarray:
    return read_calibration_images(ctx.config.data, ctx.config.quantize.calibration_images)


def needs_tensorrt_twin(ctx: StageContext) -> bool:
    engine = ctx.config.engine
    return engine.enabled and "int8" in engine.precisions


def tensorrt_twin(source: Path, dst: Path, calibration: np.ndarray, recipe: Int8Recipe) -> dict[str, Any]:
    """The INT8 model TensorRT builds from: signed Q/DQ, full-range weights, FP16 wherever not INT8."""
    return {**quantize_int8(source, dst, calibration, recipe), **qdq_float_parts_to_fp16(dst)}


def _attempt(label: str, make: Any) -> dict[str, Any]:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = make()
        for warning in caught:
            if "calibration" in str(warning.message).lower():
                print(f"[quantize] WARNING: {warning.message}")
        return {"status": Status.OK, **info}
    except Exception as exc:  # noqa: BLE001 - recorded as "export failed" for every backend using it
        print(f"[quantize] {label} FAILED: {type(exc).__name__}: {exc}")
        return {"status": Status.EXPORT_FAILED, "reason": f"{type(exc).__name__}: {exc}"[:1000]}


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    source = ctx.input_path("export_onnx", "onnx")
    q = config.quantize
    results: dict[str, Any] = {}
    outputs: dict[str, str] = {}
    jobs: list[tuple[str, str, Any]] = []
    if q.int8 or needs_tensorrt_twin(ctx):
        calibration = calibration_images(ctx)
        recipe = Int8Recipe.from_config(q)
        print(f"[quantize] INT8 weights: {'7-bit' if recipe.reduce_range else '8-bit'} ({recipe.reduce_range_reason})")
        if q.int8:
            jobs.append(("int8", INT8_NAME, lambda: quantize_int8(source, ctx.dir / INT8_NAME, calibration, recipe)))
        if needs_tensorrt_twin(ctx):
            jobs.append(("int8_tensorrt", INT8_TENSORRT_NAME, lambda: tensorrt_twin(source, ctx.dir / INT8_TENSORRT_NAME,
                                                                                   calibration, recipe.for_tensorrt())))
    if q.fp16:
        jobs.append(("fp16", FP16_NAME, lambda: convert_fp16(source, ctx.dir / FP16_NAME)))
    for label, name, make in jobs:
        print(f"[quantize] {label} -> {name}")
        results[label] = _attempt(label, make)
        if results[label]["status"] == Status.OK:
            outputs[label] = name
            results[label]["size_bytes"] = (ctx.dir / name).stat().st_size
            results[label]["path"] = f"{ctx.stage.name}/{name}"
    files = tuple(ModelFile.from_metrics(label, "onnx", precision, results[label]) if label in results
                  else ModelFile.skipped(label, NOT_ASKED[label]) for label, precision in PRECISIONS.items())
    return StageResult(outputs=outputs, metrics={keys.QUANTIZE: results}, model_files=files)


STAGE = Stage(
    name="quantize",
    run=run,
    inputs=("export_onnx",),
    config_keys=("quantize", "engine.enabled", "engine.precisions", "data"),
    # quantize.reduce_range=auto depends on the CPU: a run folder moved to another CPU re-quantizes.
    machine=lambda config: {"reduce_range": reduce_range_here(config.quantize.reduce_range)[0]},
    enabled=lambda config: config.quantize.int8 or config.quantize.fp16,
    description="INT8 (static Q/DQ, calibrated) and FP16 ONNX models",
)
