"""Stage 7: batch latency of every backend, trtexec style (warm-up, minimum count and duration)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.builders import build_student, load_weights
from pipeline.latency import machine_info, measure_latency
from pipeline.runtime import OnnxRuntimePredictor, Predictor, TorchPredictor
from pipeline.stage import Stage, StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    bench = config.benchmark
    student = load_weights(build_student(config), ctx.input_path("strip", "student"))
    predictors: dict[str, Predictor] = {
        "pytorch": TorchPredictor(student, device="cpu", threads=bench.threads),
        "onnxruntime": OnnxRuntimePredictor(ctx.input_path("export_onnx", "onnx"), threads=bench.threads),
    }
    size = config.data.image_size
    images = np.random.default_rng(0).standard_normal((bench.batch_size, 3, size, size)).astype(np.float32)
    backends: dict[str, Any] = {}
    for name, predictor in predictors.items():
        stats = measure_latency(lambda p=predictor: p.predict(images), batch_size=bench.batch_size,
                                warmup=bench.warmup, min_iters=bench.min_iters, min_seconds=bench.min_seconds)
        backends[name] = {"latency_ms": stats.to_dict(), "benchmark": {
            "batch_size": bench.batch_size, "input_shape": list(images.shape), **predictor.describe()}}
        print(f"[benchmark] {name}: p50 {stats.p50:.2f} ms, p99 {stats.p99:.2f} ms, {stats.throughput:.1f} img/s")
    return StageResult(metrics={"backends": backends, "machine": machine_info()})


STAGE = Stage(
    name="benchmark",
    run=run,
    inputs=("strip", "export_onnx"),
    config_keys=("benchmark", "data.image_size", "student.model", "distill.methods"),
    code=("pipeline.latency", "pipeline.runtime"),
    description="latency of PyTorch eager and ONNX Runtime",
)
