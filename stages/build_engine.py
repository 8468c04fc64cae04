"""Stage: TensorRT engines from the FP16 and Q/DQ INT8 ONNX models (post-training and, with
``qat.enabled``, quantization-aware).

Where TensorRT or CUDA is missing every requested engine is recorded as ``skipped`` with the
reason and the install command (never ``passed``); after installing, re-run with
``--force build_engine`` (the stage's fingerprint covers config and code, not the machine).
Engines are cached by (TensorRT version, GPU, precision, ONNX hash, profile) in
``engine.cache_dir``, and each has ``<name>.engine.json`` metadata beside it. Each requested engine
is also returned as a :class:`ModelFile` record; its ONNX source is the quantize stage's record of
it, read through the context.
"""

from __future__ import annotations

from typing import Any

from pipeline import metrics_contract as keys
from pipeline.config import PipelineConfig
from pipeline.deployment.tensorrt_engine import build_engine, engine_profile, require_tensorrt
from pipeline.model_files import ModelFile
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.runtime.base import BackendUnavailable
from pipeline.status import Status

# Which model file each engine is built from (strongly typed: precision is in the ONNX; the INT8 ones
# are TensorRT's own twins: signed Q/DQ and FP16 outside the quantized convolutions), and its build
# precision. "int8_qat" is built from the quantization-aware model when qat.enabled.
SOURCES = {"fp16": "fp16", "int8": "int8_tensorrt", "int8_qat": "int8_qat_tensorrt"}
BUILD_PRECISION = {"fp16": "fp16", "int8": "int8", "int8_qat": "int8"}


def requested_engines(config: PipelineConfig) -> list[str]:
    engines = list(config.engine.precisions)
    if config.qat.enabled and "int8" in engines:
        engines.append("int8_qat")
    return engines


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    engine_cfg = config.engine
    profile = engine_profile(config)
    engines: dict[str, Any] = {}
    outputs: dict[str, str] = {}
    try:
        require_tensorrt()
        unavailable = None
    except BackendUnavailable as exc:
        unavailable = exc
        print(f"[build_engine] skipped: {exc.reason}\n[build_engine]   to enable: {exc.install_hint}")
    for precision in requested_engines(config):
        if unavailable is not None:
            engines[precision] = {**unavailable.to_dict(), "profile": profile}
            continue
        source = ctx.model_file(SOURCES[precision])
        if source.status != Status.OK:
            status = Status.EXPORT_FAILED if source.status == Status.EXPORT_FAILED else Status.SKIPPED
            engines[precision] = {"status": status, "reason": f"no {precision} ONNX model: {source.reason}"}
            continue
        name = f"student_{precision}.engine"
        try:
            meta, from_cache = build_engine(source.located(ctx.run_dir), ctx.dir / name,
                                            precision=BUILD_PRECISION[precision],
                                            profile=profile, workspace_mb=engine_cfg.workspace_mb,
                                            cache_dir=engine_cfg.cache_dir)
        except Exception as exc:  # noqa: BLE001 - one failed engine must not hide the others
            engines[precision] = {"status": Status.EXPORT_FAILED, "reason": f"{type(exc).__name__}: {exc}"[:1000]}
            continue
        outputs[f"engine-{precision}"] = name
        outputs[f"engine-{precision}-meta"] = f"{name}.json"
        engines[precision] = {"status": Status.OK, "path": f"{ctx.stage.name}/{name}", "from_cache": from_cache,
                              "size_bytes": (ctx.dir / name).stat().st_size, **meta.__dict__}
    files = tuple(ModelFile.from_metrics(f"engine-{precision}", "tensorrt", BUILD_PRECISION[precision], entry)
                  for precision, entry in engines.items())
    return StageResult(outputs=outputs, metrics={keys.ENGINES: engines}, model_files=files)


STAGE = Stage(
    name="build_engine",
    run=run,
    inputs=("quantize", "qat_student"),
    config_keys=("engine", "data.image_size", "qat.enabled"),
    enabled=lambda config: config.engine.enabled and bool(config.engine.precisions),
    description="TensorRT engines (FP16, INT8) with metadata; skipped without TensorRT/CUDA",
)
