"""``python -m pipeline bench MODEL.onnx``: trtexec-style latency of any ONNX file in ONNX Runtime.

One row per (provider, input shape): warm-up, then at least ``min_iters`` calls and
``min_seconds``; p50/p90/p95/p99/mean and throughput, with the machine and versions. Providers
the installed onnxruntime lacks give a ``skipped`` row with the install command. Dynamic
dimensions need ``--shape``; without it the model's static shape, or its ``input_size``
metadata (batch 1), is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.measurement.benchmark_table import table_row, to_markdown, write_table
from pipeline.measurement.latency import machine_info, measure_latency
from pipeline.runtime import BackendUnavailable, OnnxRuntimePredictor
from pipeline.status import Status


class BenchError(ValueError):
    """Bad input to ``bench`` (missing file, unusable shape); the message says how to fix it."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x64x64"`` -> (1, 3, 64, 64)."""
    try:
        shape = tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise BenchError(f"--shape {text!r} is not a shape of positive ints like 1x3x64x64")
    return shape


def default_shape(path: Path) -> tuple[int, ...]:
    """The model's static input shape, or (1, C, H, W) from its ``input_size`` metadata."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in init)
    dims = [d.dim_value if d.dim_value > 0 else None for d in graph_input.type.tensor_type.shape.dim]
    if dims and all(dims):
        return tuple(dims)  # type: ignore[arg-type]
    props = {p.key: p.value for p in model.metadata_props}
    if "input_size" in props and len(dims) == 4:
        height, width = json.loads(props["input_size"])
        return (dims[0] or 1, dims[1] or 3, height, width)
    raise BenchError(f"{path.name} has dynamic input dims {dims}; pass --shape, e.g. --shape 1x3x224x224")


def check_readable(path: Path) -> None:
    """A file that is not an ONNX model (truncated, corrupt, another format) fails here, named."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends name neither file nor fix
        raise BenchError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); re-export it, or "
                         "check that the path names an .onnx file") from None


def bench_onnx(
    path: Path,
    shapes: Sequence[tuple[int, ...]] = (),
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    warmup: int = 10,
    min_iters: int = 50,
    min_seconds: float = 2.0,
) -> list[dict[str, Any]]:
    """Benchmark ``path``; returns table rows (see :mod:`pipeline.measurement.benchmark_table`)."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path} does not exist; pass the path of an .onnx file")
    check_readable(path)
    shapes = list(shapes) or [default_shape(path)]
    rows = []
    for provider in providers:
        try:
            predictor = OnnxRuntimePredictor(path, providers=(provider,), threads=threads)
        except BackendUnavailable as exc:
            for shape in shapes:
                rows.append(table_row("onnxruntime", {**exc.to_dict(), "backend": "onnxruntime",
                                                      "size_bytes": path.stat().st_size,
                                                      "benchmark": {"input_shape": list(shape)}}))
            continue
        dtype = _input_dtype(predictor)
        for shape in shapes:
            x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
            feed = {predictor.input_name: x}
            stats = measure_latency(lambda: predictor.session.run(None, feed), batch_size=shape[0], warmup=warmup,
                                    min_iters=min_iters, min_seconds=min_seconds)
            rows.append(table_row(f"onnxruntime-{predictor.precision}", {
                "status": Status.PASSED, "backend": "onnxruntime", "precision": predictor.precision,
                "size_bytes": path.stat().st_size, "latency_ms": stats.to_dict(),
                "benchmark": {"input_shape": list(shape), **predictor.describe()}}))
    return rows


def _input_dtype(predictor: OnnxRuntimePredictor) -> Any:
    kind = predictor.session.get_inputs()[0].type  # "tensor(float)", "tensor(float16)", ...
    return {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(kind, np.float32)


def run_bench(path: Path, shapes: Sequence[str], providers: Sequence[str], threads: int | None, warmup: int,
              min_iters: int, min_seconds: float, out: Path | None) -> tuple[list[dict[str, Any]], str]:
    """CLI body: rows + the Markdown text; writes bench.{json,csv,md} into ``out`` when given."""
    rows = bench_onnx(path, [parse_shape(s) for s in shapes], providers, threads, warmup, min_iters, min_seconds)
    context = {"model": str(path), "settings": {"warmup": warmup, "min_iters": min_iters, "min_seconds": min_seconds,
                                                "threads": threads if threads is not None else "default"},
               "machine": machine_info()}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_table(Path(out), "bench", rows, context)
    return rows, to_markdown(rows)
