"""Every backend x precision the pipeline knows, opened through the one :class:`Predictor` interface.

Each row is registered in :data:`BACKENDS` where it is defined here, in table order. Validation
and benchmarking iterate over :func:`backend_plan`; each entry either opens a
predictor or says honestly why not: ``skipped`` (this machine lacks the library, the GPU or the
execution provider; with the install command) or ``export failed`` (the model file for that
precision could not be produced), as the run's :class:`ModelFile` records say. Keys are
``<backend>-<precision>``; ``pytorch`` and ``onnxruntime`` (the FP32 CPU model) are kept as aliases
for the original metrics contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.model_files import ModelFile
from pipeline.registry import Registry
from pipeline.runtime.base import BackendUnavailable, Predictor
from pipeline.runtime.provider_options import CUDA_EP, TRT_EP
from pipeline.status import Status

# metrics.json keys from the first contract, mirrored from their canonical entries.
LEGACY_ALIASES = {"pytorch": "pytorch-fp32", "onnxruntime": "onnxruntime-fp32"}
REFERENCE_KEY = "pytorch-fp32"


@dataclass(frozen=True)
class Backend:
    key: str  # "onnxruntime-int8"
    backend: str  # "onnxruntime", "onnxruntime-cuda", "tensorrt", ...
    precision: str
    model_file: str  # the key of the ModelFile it runs ("torch", "fp32", "fp16", "int8", "engine-fp16", ...)
    make: Callable[[Path | None], Predictor]


@dataclass(frozen=True)
class BackendSettings:
    """What opening a backend needs from the run: the stripped student (built lazily), intra-op
    threads, and for the GPU providers the engine profile and a cache folder."""

    torch_model: Callable[[], Any]
    threads: int | None = None
    profile: dict[str, list[int]] | None = None
    cache_dir: Path | None = None


@dataclass(frozen=True)
class BackendEntry:
    """A registered row: ``open(settings, path)`` makes its predictor or raises BackendUnavailable."""

    key: str
    backend: str
    precision: str
    model_file: str
    open: Callable[[BackendSettings, Path | None], Predictor]

    def bind(self, settings: BackendSettings) -> Backend:
        return Backend(self.key, self.backend, self.precision, self.model_file,
                       lambda path: self.open(settings, path))


# Every backend x precision row, by its metrics.json key; registration order is table order.
BACKENDS: Registry[BackendEntry] = Registry("backend")


@dataclass
class OpenedBackend:
    """A backend ready to run (``predictor``) or the honest row saying why it is not."""

    spec: Backend
    predictor: Predictor | None
    file: Path | None = None
    status: Status | None = None  # set when predictor is None
    reason: str = ""
    install_hint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def unavailable_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"status": self.status, "backend": self.spec.backend, "precision": self.spec.precision,
                               "reason": self.reason}
        if self.install_hint:
            row["install_hint"] = self.install_hint
        return row


def backend_plan(torch_model: Callable[[], Any], threads: int | None = None,
                 profile: dict[str, list[int]] | None = None, cache_dir: Path | None = None) -> list[Backend]:
    """The full matrix, in table order. ``torch_model`` builds the stripped student (lazily);
    ``profile`` (the engine's min/opt/max input shapes) and ``cache_dir`` configure the GPU providers."""
    settings = BackendSettings(torch_model, threads, profile, cache_dir)
    return [entry.bind(settings) for entry in BACKENDS.entries()]


def _torch(settings: BackendSettings, _: Path | None) -> Predictor:
    from pipeline.runtime import TorchPredictor

    return TorchPredictor(settings.torch_model(), device="cpu", threads=settings.threads)


def _onnxruntime(providers: tuple[str, ...], precision: str = "fp32") -> Callable[[BackendSettings, Path | None], Predictor]:
    def open_(settings: BackendSettings, path: Path | None) -> Predictor:
        from pipeline.runtime import OnnxRuntimePredictor
        from pipeline.runtime.provider_options import provider_options

        options = [provider_options(p, precision=precision, profile=settings.profile, cache_dir=settings.cache_dir)
                   for p in providers]
        return OnnxRuntimePredictor(path, providers=providers, threads=settings.threads,
                                    provider_options=options if any(options) else None)

    return open_


def _onnxruntime_fp16(settings: BackendSettings, path: Path | None) -> Predictor:
    from pipeline.runtime import available_onnxruntime_providers

    if CUDA_EP not in available_onnxruntime_providers():
        raise BackendUnavailable(
            "FP16 ONNX runs well only on a GPU execution provider; this onnxruntime has none (on CPU, ONNX "
            "Runtime casts FP16 back to FP32 around every node, so the figure would be meaningless)",
            "pip install onnxruntime-gpu (in place of onnxruntime; needs CUDA + cuDNN)")
    return _onnxruntime((CUDA_EP,), "fp16")(settings, path)


def _tensorrt(_: BackendSettings, path: Path | None) -> Predictor:
    from pipeline.runtime import TensorRTPredictor

    return TensorRTPredictor(path)


for _entry in (
    BackendEntry("pytorch-fp32", "pytorch", "fp32", "torch", _torch),
    BackendEntry("onnxruntime-fp32", "onnxruntime", "fp32", "fp32", _onnxruntime(("CPUExecutionProvider",))),
    BackendEntry("onnxruntime-int8", "onnxruntime", "int8", "int8", _onnxruntime(("CPUExecutionProvider",))),
    BackendEntry("onnxruntime-int8-qat", "onnxruntime", "int8", "int8_qat", _onnxruntime(("CPUExecutionProvider",))),
    BackendEntry("onnxruntime-fp16", "onnxruntime-cuda", "fp16", "fp16", _onnxruntime_fp16),
    BackendEntry("onnxruntime-cuda-fp32", "onnxruntime-cuda", "fp32", "fp32", _onnxruntime((CUDA_EP,))),
    BackendEntry("onnxruntime-tensorrt-tf32", "onnxruntime-tensorrt", "tf32", "fp32",
                 _onnxruntime((TRT_EP, CUDA_EP), "tf32")),
    BackendEntry("tensorrt-fp16", "tensorrt", "fp16", "engine-fp16", _tensorrt),
    BackendEntry("tensorrt-int8", "tensorrt", "int8", "engine-int8", _tensorrt),
    BackendEntry("tensorrt-int8-qat", "tensorrt", "int8", "engine-int8_qat", _tensorrt),
):
    BACKENDS.register(_entry.key, _entry)


def open_backend(spec: Backend, files: Mapping[str, ModelFile], run_dir: Path) -> OpenedBackend:
    """Open ``spec`` on its model file (paths relative to ``run_dir``); never raises for "cannot run
    here", returns the reason instead."""
    file = files.get(spec.model_file) or ModelFile.skipped(spec.model_file, f"no {spec.model_file} model in this run")
    path = file.located(run_dir)
    if file.status != Status.OK:
        return OpenedBackend(spec, None, path, file.status, file.reason, file.install_hint)
    try:
        predictor = spec.make(path)
    except BackendUnavailable as exc:
        return OpenedBackend(spec, None, path, Status.SKIPPED, exc.reason, exc.install_hint)
    return OpenedBackend(spec, predictor, path)


def with_legacy_aliases(backends: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add ``pytorch`` / ``onnxruntime`` copies of their canonical entries (metrics contract v1)."""
    out = dict(backends)
    for alias, key in LEGACY_ALIASES.items():
        if key in backends:
            out[alias] = dict(backends[key])
    return out


def file_size(path: Path | None) -> int | None:
    return Path(path).stat().st_size if path is not None and Path(path).is_file() else None
