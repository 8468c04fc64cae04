"""Stage 5: export the stripped student to one ONNX file with dynamic batch/H/W and metadata.

With ``export.simplify`` the file is run through onnxslim and the simplified graph replaces the
exported one only when its logits still match (max abs diff <= ``validate.atol`` at two input
sizes); the decision and the reason are recorded either way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import metrics_contract as keys
from pipeline.builders import build_student, load_weights
from pipeline.data import dataset_info
from pipeline.deployment.export import export_onnx, simplify_onnx
from pipeline.environment import git_sha
from pipeline.model_files import ModelFile
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.tasks import get_task

log = logging.getLogger(__name__)
ONNX_NAME = "student.onnx"
# Whose metrics go into the file's metadata, when those stages ran: (stage, metrics key).
METRIC_SOURCES = (("train_teacher", keys.TEACHER), ("train_student_baseline", keys.STUDENT_BASELINE),
                  ("distill_student", keys.STUDENT))


def run_metrics(ctx: StageContext) -> dict[str, Any]:
    """The run's headline figures known at export time (the task metric of each model, student params)."""
    metric = get_task(ctx.config.task).metric
    found: dict[str, Any] = {}
    for stage, key in METRIC_SOURCES:
        if ctx.has_input(stage) and key in ctx.input_metrics(stage):
            found[f"{key}_{metric}"] = ctx.input_metrics(stage)[key].get(metric)
    if ctx.has_input("strip"):
        found["student_params"] = ctx.input_metrics("strip").get("strip", {}).get("student_params")
    return found


def simplify_if_equivalent(path: Path, image_size: int, atol: float) -> dict[str, Any]:
    """Replace ``path`` by its onnxslim version only if its logits match; returns the record."""
    import onnxruntime as ort

    slim = path.with_name(path.stem + ".slim.onnx")
    try:
        simplify_onnx(path, slim)
        rng = np.random.default_rng(0)
        diffs = []
        for batch, side in ((1, image_size), (2, image_size * 2)):
            x = rng.standard_normal((batch, 3, side, side)).astype(np.float32)
            outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
                    for p in (path, slim)]
            diffs.append(float(np.abs(outs[0] - outs[1]).max()))
        max_diff = max(diffs)
        if max_diff > atol:
            return {"simplified": False, "reason": f"onnxslim changed the logits (max abs diff {max_diff:.2e} > "
                                                  f"{atol:g}); kept the exported graph", "max_abs_diff": max_diff}
        before = path.stat().st_size
        slim.replace(path)
        return {"simplified": True, "max_abs_diff": max_diff, "size_before": before, "size_after": path.stat().st_size}
    except Exception as exc:  # noqa: BLE001 - a failed simplification keeps the valid exported file
        log.warning("onnxslim failed (%s); keeping the exported graph", exc)
        return {"simplified": False, "reason": f"onnxslim failed: {type(exc).__name__}: {exc}"[:500]}
    finally:
        slim.unlink(missing_ok=True)


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    info = dataset_info(config.data)
    task = get_task(config.task)
    student = load_weights(build_student(config), ctx.input_path("strip", "student")).eval()
    size = config.data.image_size
    metadata = {
        "task": task.name,
        "class_names": json.dumps(list(info.class_names)),
        "num_classes": str(info.num_classes),
        "input_size": json.dumps([size, size]),
        "input_layout": "NCHW float32, RGB in [0,1] normalised by mean/std",
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        **task.export_metadata(info),
        "precision": "fp32",
        "student": json.dumps(task.describe_model(config.student.model)),
        "distill_methods": json.dumps([spec.model_dump() for spec in config.distill.methods]),
        "git_sha": git_sha() or "unknown",
        "run_name": config.run.name,
        "metrics": json.dumps(run_metrics(ctx)),
    }
    example_shape = (2 if config.export.dynamic else 1, 3, size, size)
    path = export_onnx(student, ctx.dir / ONNX_NAME, example_shape=example_shape, opset=config.export.opset,
                       dynamic=config.export.dynamic, argmax=config.export.argmax, metadata=metadata)
    export_metrics: dict[str, Any] = {"opset": config.export.opset, "dynamic": config.export.dynamic,
                                      "argmax": config.export.argmax}
    if config.export.simplify:
        export_metrics["simplify"] = simplify_if_equivalent(path, size, config.validate_.atol)
        print(f"[export_onnx] onnxslim: {export_metrics['simplify']}")
    export_metrics["size_bytes"] = path.stat().st_size
    relative = f"{ctx.stage.name}/{path.name}"
    return StageResult(outputs={"onnx": path.name},
                       metrics={keys.ARTIFACTS: {"onnx": relative}, keys.EXPORT: export_metrics},
                       model_files=(ModelFile("fp32", relative, "onnx", "fp32", metadata=export_metrics),))


STAGE = Stage(
    name="export_onnx",
    run=run,
    inputs=("strip", "distill_student", "train_teacher", "train_student_baseline"),
    config_keys=("task", "export", "validate.atol", "student.model", "distill.methods", "data.image_size",
                 "data.dataset"),
    description="export the student to ONNX (dynamic shapes, checked, optionally simplified, with metadata)",
)
