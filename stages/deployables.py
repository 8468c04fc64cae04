"""What the deployment stages share: the run's model files per backend, and the INT8 calibration images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pipeline.builders import build_student, load_weights
from pipeline.config import PipelineConfig
from pipeline.deployment.quantize import read_calibration_images
from pipeline.model_files import ModelFile
from pipeline.orchestration.stage import StageContext

# The model files of pipeline.runtime.backends.backend_plan, as the stages in DEPLOY_INPUTS record them.
DEPLOYABLE_KEYS = ("torch", "fp32", "int8", "int8_qat", "fp16", "engine-fp16", "engine-int8", "engine-int8_qat")
DEPLOY_INPUTS = ("strip", "export_onnx", "quantize", "qat_student", "build_engine")


def gpu_provider_settings(config: PipelineConfig) -> dict[str, Any]:
    """What ONNX Runtime's GPU providers are configured with: the engine profile and a cache folder."""
    from pipeline.deployment.tensorrt_engine import DEFAULT_CACHE_DIR, engine_profile

    cache = Path(config.engine.cache_dir or DEFAULT_CACHE_DIR).expanduser() / "onnxruntime"
    return {"profile": engine_profile(config), "cache_dir": cache}


def student_factory(ctx: StageContext) -> Callable[[], nn.Module]:
    return lambda: load_weights(build_student(ctx.config), ctx.input_path("strip", "student")).eval()


def run_model_files(ctx: StageContext) -> dict[str, ModelFile]:
    """Each deployable model file of this run, or why there is none ("skipped", "export failed")."""
    return {key: ctx.model_file(key) for key in DEPLOYABLE_KEYS}


def calibration_images(ctx: StageContext) -> np.ndarray:
    """The first ``quantize.calibration_images`` training images, unaugmented, normalised like the inputs."""
    return read_calibration_images(ctx.config.data, ctx.config.quantize.calibration_images)


def needs_tensorrt_twin(ctx: StageContext) -> bool:
    """Whether an INT8 TensorRT engine is asked for, so its signed Q/DQ twin must be written."""
    engine = ctx.config.engine
    return engine.enabled and "int8" in engine.precisions
