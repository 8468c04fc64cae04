"""Stage 5: export the stripped student to one ONNX file with dynamic batch/H/W and metadata."""

from __future__ import annotations

import json

from pipeline.builders import build_student, load_weights
from pipeline.data import dataset_info
from pipeline.environment import git_sha
from pipeline.export import export_onnx
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.tasks import get_task

ONNX_NAME = "student.onnx"


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
        "metrics": json.dumps({f"student_{task.metric}": ctx.input_metrics("distill_student")["student"][task.metric]}),
    }
    path = export_onnx(student, ctx.dir / ONNX_NAME, example_shape=(2, 3, size, size), opset=config.export.opset,
                       dynamic=config.export.dynamic, argmax=config.export.argmax, metadata=metadata)
    relative = f"{ctx.stage.name}/{path.name}"
    return StageResult(outputs={"onnx": path.name},
                       metrics={"artifacts": {"onnx": relative},
                                "export": {"opset": config.export.opset, "dynamic": config.export.dynamic,
                                           "size_bytes": path.stat().st_size}})


STAGE = Stage(
    name="export_onnx",
    run=run,
    inputs=("strip", "distill_student"),
    config_keys=("task", "export", "student.model", "distill.methods", "data.image_size", "data.dataset"),
    code=("pipeline.export", "pipeline.models", "pipeline.builders", "pipeline.tasks"),
    description="export the student to ONNX (dynamic shapes, checked, with metadata)",
)
