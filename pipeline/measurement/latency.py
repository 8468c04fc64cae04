"""Latency measurement in the manner of trtexec, and the machine facts printed beside it.

Warm-up calls first (allocators, kernel selection, lazy init), then keep calling until both a
minimum count and a minimum duration are reached, so short runs are not dominated by noise and
slow models still finish. Each call is timed on its own so the tail (p99) is visible, not just
the mean.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds; ``throughput`` in images per second."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    iters: int
    seconds: float  # total measured time (warm-up excluded)
    throughput: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def measure_latency(
    fn: Callable[[], Any],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    min_iters: int = 50,
    min_seconds: float = 2.0,
    progress: bool = False,
) -> LatencyStats:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``min_iters`` calls and ``min_seconds``.

    ``fn`` must finish its work before returning (e.g. copy the result to host), otherwise
    asynchronous devices would be timed on launch only.
    """
    if batch_size < 1 or min_iters < 1 or warmup < 0 or min_seconds < 0:
        raise ValueError("need batch_size >= 1, min_iters >= 1, warmup >= 0, min_seconds >= 0")
    bar = _progress_bar(progress, warmup + min_iters)
    for _ in range(warmup):
        fn()
        bar.update(1)

    times: list[float] = []
    total = 0.0
    while len(times) < min_iters or total < min_seconds:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        total += elapsed
        bar.update(1)
    bar.close()

    ms = np.asarray(times, dtype=np.float64) * 1e3
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return LatencyStats(
        p50=float(p50),
        p90=float(p90),
        p95=float(p95),
        p99=float(p99),
        mean=float(ms.mean()),
        std=float(ms.std()),
        min=float(ms.min()),
        iters=len(times),
        seconds=float(total),
        throughput=float(batch_size * len(times) / total) if total > 0 else float("inf"),
    )


class _NoBar:
    def update(self, _: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    # total is the minimum number of calls; the min_seconds rule may run past it.
    return tqdm(total=total, desc="latency", unit="call", leave=False)


def machine_info() -> dict[str, Any]:
    """CPU, cores, Python and library versions, GPU name: what makes a latency figure comparable."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
    for name in ("torch", "onnxruntime", "onnx", "numpy"):
        try:
            module = __import__(name)
            info[f"{name}_version"] = getattr(module, "__version__", "unknown")
        except ImportError:
            info[f"{name}_version"] = None
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["cuda_version"] = torch.version.cuda
    except ImportError:
        info["cuda_device"] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
