"""Device choice, seeding, determinism and the facts recorded beside every figure."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.artifacts import sha256_json
from pipeline.config import PipelineConfig, RunConfig, comparable_config


def select_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is visible; use run.device=auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_torch(run: RunConfig) -> torch.device:
    """Apply the run's threads/denormal/determinism settings and return the device to use."""
    if run.threads:
        torch.set_num_threads(run.threads)
    torch.set_flush_denormal(run.flush_denormal)  # False (a no-op) where the CPU has no FTZ/DAZ
    if run.deterministic:
        # Required by cuBLAS for deterministic matmuls; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    return select_device(run.device)


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def framework_fingerprint() -> str:
    """The framework release that trained numbers are exact to (``torch-2.14.1``; the build tag such as
    ``+cu130`` is left out: CPU kernels do not depend on it). Another release moves a tiny run's mIoU
    by more than a CI gate's tolerance, so gates compare like with like here too."""
    return "torch-" + torch.__version__.split("+")[0]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``AuthenticAMD-25-17``: vendor, family and model from /proc/cpuinfo (oneDNN and MKL pick their
    kernels by them); ``platform.processor()`` or the architecture where that file does not exist."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    parts = [fields.get(key) for key in ("vendor_id", "cpu family", "model")]
    if all(parts):
        return "-".join(str(part) for part in parts)
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The first processor's feature flags from /proc/cpuinfo; None where that file does not exist."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return frozenset()


def hardware_fingerprint(device: torch.device) -> str:
    """The kernels a run's numbers are exact to: ``cpu-AVX512-AuthenticAMD-25-17`` or
    ``cuda-NVIDIA H200-sm90-cudnn92400``. The same seeded CPU run repeats bit for bit on one machine
    type, but oneDNN and MKL choose different kernels on another CPU, and a tiny run's mIoU moves by
    up to 2 points (the smoke run between two x86 machines, same torch), so gates compare like with like."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-{torch.cuda.get_device_name(device)}-sm{major}{minor}-cudnn{torch.backends.cudnn.version()}"
    return f"{device.type}-{torch.backends.cpu.get_cpu_capability()}-{cpu_model()}"


def _device_or_cpu(requested: str) -> torch.device:
    """The device a run uses; the CPU where the requested GPU is absent (a finished run re-reported)."""
    return torch.device("cuda") if requested in ("auto", "cuda") and torch.cuda.is_available() else torch.device(
        "cpu" if requested in ("auto", "cuda") else requested)


def run_info(config: PipelineConfig) -> dict[str, Any]:
    """The identity of a run: what CI gates compare before comparing numbers."""
    from pipeline.data import dataset_fingerprint

    return {
        "name": config.run.name,
        "config_fingerprint": sha256_json(comparable_config(config)),
        "dataset_fingerprint": dataset_fingerprint(config.data),
        "framework_fingerprint": framework_fingerprint(),
        "hardware_fingerprint": hardware_fingerprint(_device_or_cpu(config.run.device)),
        "git_sha": git_sha(),
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
