"""What validate, benchmark and the deploy bundle share: the run's model files per backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.builders import build_student, load_weights
from pipeline.config import PipelineConfig
from pipeline.model_files import ModelFile
from pipeline.orchestration.stage import StageContext

# The model files of pipeline.runtime.backends.backend_plan, as the stages in DEPLOY_INPUTS record them.
DEPLOYABLE_KEYS = ("torch", "fp32", "int8", "fp16", "engine-fp16", "engine-int8")
DEPLOY_INPUTS = ("strip", "export_onnx", "quantize", "build_engine")


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
