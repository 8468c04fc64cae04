"""Every backend x precision the pipeline knows, opened through the one :class:`Predictor` interface.

Validation and benchmarking iterate over :func:`backend_plan`; each entry either opens a
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
    from pipeline.runtime import OnnxRuntimePredictor, TorchPredictor
    from pipeline.runtime.provider_options import provider_options

    def ort(providers: tuple[str, ...], precision: str = "fp32") -> Callable[[Path | None], Predictor]:
        options = [provider_options(p, precision=precision, profile=profile, cache_dir=cache_dir) for p in providers]
        return lambda path: OnnxRuntimePredictor(path, providers=providers, threads=threads,
                                                 provider_options=options if any(options) else None)

    def ort_fp16(path: Path | None) -> Predictor:
        from pipeline.runtime import available_onnxruntime_providers

        if CUDA_EP not in available_onnxruntime_providers():
            raise BackendUnavailable(
                "FP16 ONNX runs well only on a GPU execution provider; this onnxruntime has none (on CPU, ONNX "
                "Runtime casts FP16 back to FP32 around every node, so the figure would be meaningless)",
                "pip install onnxruntime-gpu (in place of onnxruntime; needs CUDA + cuDNN)")
        return ort((CUDA_EP,), "fp16")(path)

    def tensorrt(path: Path | None) -> Predictor:
        from pipeline.runtime import TensorRTPredictor

        return TensorRTPredictor(path)

    return [
        Backend("pytorch-fp32", "pytorch", "fp32", "torch",
                lambda _: TorchPredictor(torch_model(), device="cpu", threads=threads)),
        Backend("onnxruntime-fp32", "onnxruntime", "fp32", "fp32", ort(("CPUExecutionProvider",))),
        Backend("onnxruntime-int8", "onnxruntime", "int8", "int8", ort(("CPUExecutionProvider",))),
        Backend("onnxruntime-fp16", "onnxruntime-cuda", "fp16", "fp16", ort_fp16),
        Backend("onnxruntime-cuda-fp32", "onnxruntime-cuda", "fp32", "fp32", ort((CUDA_EP,))),
        Backend("onnxruntime-tensorrt-tf32", "onnxruntime-tensorrt", "tf32", "fp32", ort((TRT_EP, CUDA_EP), "tf32")),
        Backend("tensorrt-fp16", "tensorrt", "fp16", "engine-fp16", tensorrt),
        Backend("tensorrt-int8", "tensorrt", "int8", "engine-int8", tensorrt),
    ]


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
