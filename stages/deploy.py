"""Stage: the edge bundle ``<run>/deploy/``, what a user copies onto a Jetson or any edge box.

ONNX models (FP32, FP16, INT8), TensorRT engines with their metadata when built, ``meta.json``
(classes, mean/std, input size, metrics, files) and ``run_onnx.py``, a standalone script that
runs and benchmarks them with only numpy and onnxruntime.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipeline import metrics_contract as keys
from pipeline.artifacts import atomic_path, atomic_write_json, sha256_file
from pipeline.data import dataset_info
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from stages.deployables import DEPLOY_INPUTS, run_model_files

SCRIPT = Path(__file__).resolve().parents[1] / "pipeline" / "edge" / "run_onnx.py"
FILES = {"fp32": "student_fp32.onnx", "fp16": "student_fp16.onnx", "int8": "student_int8.onnx",
         "int8_qat": "student_int8_qat.onnx", "engine-fp16": "student_fp16.engine",
         "engine-int8": "student_int8.engine", "engine-int8_qat": "student_int8_qat.engine"}


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def bundle_metrics(ctx: StageContext) -> dict[str, Any]:
    """Headline figures for meta.json: student mIoU and, when benchmarked, each backend's."""
    backends = ctx.input_metrics("benchmark").get("backends", {}) if ctx.has_input("benchmark") else {}
    validated = ctx.input_metrics("validate").get("backends", {}) if ctx.has_input("validate") else {}
    out: dict[str, Any] = {}
    for key, entry in validated.items():
        if "-" in key:  # canonical keys only
            out[key] = {"status": entry.get("status"), "miou": entry.get("miou"),
                        "p50_ms": backends.get(key, {}).get("latency_ms", {}).get("p50")}
    return out


# What run_onnx.py reads from the model's output, by task.
OUTPUT_LAYOUTS = {"segmentation": "NCHW float32 class scores (argmax over C: the class mask)",
                  "classification": "(batch, num_classes) float32 logits, before softmax"}

def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    info = dataset_info(config.data)
    outputs: dict[str, str] = {}
    models: dict[str, str] = {}
    for key, file in run_model_files(ctx).items():
        path = file.located(ctx.run_dir)
        if key not in FILES or path is None:
            continue
        _copy(path, ctx.dir / FILES[key])
        outputs[key] = models[key] = FILES[key]
        if key.startswith("engine-"):
            _copy(path.with_name(path.name + ".json"), ctx.dir / f"{FILES[key]}.json")
            outputs[f"{key}-meta"] = f"{FILES[key]}.json"
    _copy(SCRIPT, ctx.dir / "run_onnx.py")
    outputs["script"] = "run_onnx.py"
    meta = {
        "task": config.task,
        "class_names": list(info.class_names),
        "num_classes": info.num_classes,
        "ignore_index": info.ignore_index,
        "mean": list(info.mean),
        "std": list(info.std),
        "input_size": [config.data.image_size, config.data.image_size],
        "input": {"name": "images", "layout": "NCHW float32, RGB in [0,1] normalised by mean/std",
                  "dynamic": ["batch", "height", "width"] if config.export.dynamic else []},
        "output": {"name": "logits", "layout": OUTPUT_LAYOUTS[config.task]},
        "models": models,
        "sha256": {name: sha256_file(ctx.dir / name) for name in models.values()},
        "metrics": bundle_metrics(ctx),
        "run_name": config.run.name,
        "usage": "python run_onnx.py --help  (needs numpy + onnxruntime; Pillow for images)",
    }
    atomic_write_json(ctx.dir / "meta.json", meta)
    outputs["meta"] = "meta.json"
    print(f"[deploy] bundle in {ctx.dir}: {', '.join(sorted(models.values()))}")
    return StageResult(outputs=outputs, metrics={keys.ARTIFACTS: {"deploy": ctx.stage.name}})


STAGE = Stage(
    name="deploy",
    run=run,
    inputs=(*DEPLOY_INPUTS, "validate", "benchmark"),
    config_keys=("deploy", "data", "export.dynamic"),
    enabled=lambda config: config.deploy.enabled,
    description="edge bundle: ONNX models, engines, meta.json, run_onnx.py",
)
