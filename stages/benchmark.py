"""Stage: latency of every backend x precision, trtexec style, and the benchmark table.

Warm-up, then at least ``benchmark.min_iters`` calls and ``benchmark.min_seconds``; p50/p90/
p95/p99/mean and throughput. The status of each row comes from the validate stage (a backend
that failed validation is still timed, and says so). Writes ``benchmark.{json,csv,md}`` with the
machine, threads, providers and versions beside the figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import metrics_contract as keys
from pipeline.measurement.benchmark_table import table_row, write_table
from pipeline.measurement.latency import machine_info, measure_latency
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.runtime.backends import backend_plan, open_backend, with_legacy_aliases
from pipeline.status import Status
from stages.deployables import DEPLOY_INPUTS, gpu_provider_settings, run_model_files, student_factory


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    bench = config.benchmark
    files = run_model_files(ctx)
    validated = ctx.input_metrics("validate").get("backends", {})
    size = config.data.image_size
    images = np.random.default_rng(0).standard_normal((bench.batch_size, 3, size, size)).astype(np.float32)

    backends: dict[str, Any] = {}
    for spec in backend_plan(student_factory(ctx), threads=bench.threads, **gpu_provider_settings(ctx.config)):
        entry = dict(validated.get(spec.key, {}))
        opened = open_backend(spec, files, ctx.run_dir)
        if opened.predictor is None:
            backends[spec.key] = {**entry, **opened.unavailable_row()}
            print(f"[benchmark] {spec.key}: {opened.status} ({opened.reason})")
            continue
        predictor = opened.predictor
        stats = measure_latency(lambda p=predictor: p.predict(images), batch_size=bench.batch_size,
                                warmup=bench.warmup, min_iters=bench.min_iters, min_seconds=bench.min_seconds)
        entry.update(latency_ms=stats.to_dict(), benchmark={
            "batch_size": bench.batch_size, "input_shape": list(images.shape), "warmup": bench.warmup,
            "min_iters": bench.min_iters, "min_seconds": bench.min_seconds, **predictor.describe()})
        entry.setdefault("status", Status.PASSED)
        backends[spec.key] = entry
        print(f"[benchmark] {spec.key}: p50 {stats.p50:.2f} ms, p99 {stats.p99:.2f} ms, {stats.throughput:.1f} img/s")

    speedups = _speedups(backends)
    machine = machine_info()
    rows = [table_row(key, entry) for key, entry in backends.items()]
    settings = {"batch_size": bench.batch_size, "input_shape": list(images.shape), "warmup": bench.warmup,
                "min_iters": bench.min_iters, "min_seconds": bench.min_seconds,
                "threads": bench.threads if bench.threads is not None else "default"}
    write_table(ctx.dir, "benchmark", rows, {"settings": settings, "speedups": speedups, "machine": machine})
    # Only latency-side facts go into metrics; validate owns status/mIoU (deep-merged later).
    latency_only = {key: {k: v for k, v in entry.items() if k in ("latency_ms", "benchmark")}
                    for key, entry in backends.items()}
    return StageResult(outputs={"table_json": "benchmark.json", "table_csv": "benchmark.csv",
                                "table_md": "benchmark.md"},
                       metrics={keys.BACKENDS: with_legacy_aliases(latency_only), keys.MACHINE: machine,
                                keys.BENCHMARK: {"settings": settings, "speedups": speedups,
                                              "table": f"{ctx.stage.name}/benchmark.md"}})


def _speedups(backends: dict[str, Any]) -> dict[str, float]:
    """The ratios the done-targets are stated in (p50 based)."""
    def p50(key: str) -> float | None:
        return backends.get(key, {}).get("latency_ms", {}).get("p50")

    pairs = {"onnxruntime-fp32_vs_pytorch-fp32": ("pytorch-fp32", "onnxruntime-fp32"),
             "onnxruntime-int8_vs_onnxruntime-fp32": ("onnxruntime-fp32", "onnxruntime-int8"),
             "tensorrt-fp16_vs_pytorch-fp32": ("pytorch-fp32", "tensorrt-fp16")}
    out = {}
    for name, (slow, fast) in pairs.items():
        if p50(slow) and p50(fast):
            out[name] = round(p50(slow) / p50(fast), 3)
    return out


STAGE = Stage(
    name="benchmark",
    run=run,
    inputs=(*DEPLOY_INPUTS, "validate"),
    config_keys=("benchmark", "data.image_size", "student.model", "distill.methods", "engine"),
    description="latency of every backend x precision; benchmark.{json,csv,md}",
)
