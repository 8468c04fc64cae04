"""What validate, benchmark and the deploy bundle share: the run's model files per backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.backends import Artifact
from pipeline.builders import build_student, load_weights
from pipeline.config import PipelineConfig
from pipeline.stage import StageContext
from stages.quantize import quantized_artifact


def gpu_provider_settings(config: PipelineConfig) -> dict[str, Any]:
    """What ONNX Runtime's GPU providers are configured with: the engine profile and a cache folder."""
    from pipeline.tensorrt_engine import DEFAULT_CACHE_DIR, engine_profile

    cache = Path(config.engine.cache_dir or DEFAULT_CACHE_DIR).expanduser() / "onnxruntime"
    return {"profile": engine_profile(config), "cache_dir": cache}


def student_factory(ctx: StageContext) -> Callable[[], nn.Module]:
    return lambda: load_weights(build_student(ctx.config), ctx.input_path("strip", "student")).eval()


def run_artifacts(ctx: StageContext) -> dict[str, Artifact]:
    """Artifact per key of :func:`pipeline.backends.backend_plan` ("torch", "fp32", "int8", ...)."""
    artifacts = {"torch": Artifact(ctx.input_path("strip", "student")),
                 "fp32": Artifact(ctx.input_path("export_onnx", "onnx"))}
    for label in ("int8", "fp16"):
        path, record = quantized_artifact(ctx, label)
        artifacts[label] = Artifact(path) if path is not None else Artifact(
            None, record.get("status", "skipped"), record.get("reason", ""))
    engines = ctx.input_metrics("build_engine").get("engines", {}) if ctx.has_input("build_engine") else {}
    for precision in ("fp16", "int8"):
        record = engines.get(precision)
        key = f"engine-{precision}"
        if record is None:
            artifacts[key] = Artifact(None, "skipped", f"no TensorRT {precision} engine requested "
                                                       "(engine.enabled / engine.precisions)")
        elif record["status"] == "ok":
            artifacts[key] = Artifact(ctx.input_path("build_engine", key))
        else:
            artifacts[key] = Artifact(None, record["status"], record.get("reason", ""), record.get("install_hint", ""))
    return artifacts


DEPLOY_INPUTS = ("strip", "export_onnx", "quantize", "build_engine")
