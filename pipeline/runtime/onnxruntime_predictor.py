"""ONNX Runtime inference on any execution provider (CPU, CUDA, TensorRT EP)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime.base import BackendUnavailable

# What to install when a provider is missing; the CPU wheel only ships CPU (and Azure) providers.
_INSTALL_HINTS = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (in place of onnxruntime; needs CUDA + cuDNN)",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu tensorrt (in place of onnxruntime; needs CUDA)",
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino",
    "DmlExecutionProvider": "pip install onnxruntime-directml",
    "CoreMLExecutionProvider": "pip install onnxruntime (macOS wheel)",
}
_DEFAULT_HINT = "pip install onnxruntime-gpu"
_GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider"}


class OnnxRuntimePredictor:
    """An ``onnxruntime.InferenceSession`` behind the :class:`Predictor` interface.

    Input and output names are read from the model (first output = logits), so the predictor
    also runs files with an extra ``labels`` output. ``precision`` comes from the model's
    ``metadata_props["precision"]`` (set by the export/quantize stages), default ``fp32``.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        provider_options: Sequence[dict[str, str]] | None = None,
    ) -> None:
        """``provider_options``: one dict per provider, in order (see :mod:`pipeline.runtime.provider_options`)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
            raise BackendUnavailable(f"onnxruntime is not importable: {exc}", "pip install onnxruntime") from exc

        self.path = Path(path)
        if isinstance(providers, str):  # a bare string would otherwise be split into letters
            providers = (providers,)
        self.requested_providers = list(providers)
        available = ort.get_available_providers()
        for provider in self.requested_providers:
            if provider not in available:
                raise BackendUnavailable(
                    f"ONNX Runtime {ort.__version__} has no {provider} (available: {', '.join(available)})",
                    _INSTALL_HINTS.get(provider, _DEFAULT_HINT),
                )

        if any(p in _GPU_PROVIDERS for p in self.requested_providers) and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels (ONNX Runtime >= 1.21), before the session
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        self.threads = threads
        self.provider_options = [dict(o) for o in provider_options] if provider_options else None
        if self.provider_options is not None and len(self.provider_options) != len(self.requested_providers):
            raise ValueError(f"{len(self.provider_options)} provider option dicts for "
                             f"{len(self.requested_providers)} providers; give one per provider")
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.requested_providers,
                                            provider_options=self.provider_options)

        # A GPU provider whose shared libraries fail to load is dropped with only a log line;
        # refuse that, so a "CUDA" figure is never a CPU measurement.
        active = self.session.get_providers()
        missing = [p for p in self.requested_providers if p not in active]
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime could not initialise {', '.join(missing)} (session runs on {', '.join(active)}); "
                "check the CUDA/cuDNN/TensorRT libraries",
                _INSTALL_HINTS.get(missing[0], _DEFAULT_HINT),
            )
        self.providers = active
        self.device = "cuda" if self.requested_providers and self.requested_providers[0] in _GPU_PROVIDERS else "cpu"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None  # static export
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.precision = self.metadata.get("precision", "fp32")
        self._ort_version = ort.__version__

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        step = self.fixed_batch
        if step is None or len(images) == step:
            return self._run(images)
        # A statically exported model takes exactly its batch: feed chunks, zero-pad the last one.
        chunks = []
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            padded = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            chunks.append(self._run(padded)[: len(chunk)])
        return np.concatenate(chunks)

    def _run(self, images: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([self.output_name], {self.input_name: images})
        return np.asarray(logits, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "provider": self.providers[0],
            "providers": list(self.providers),
            "threads": self.threads if self.threads is not None else "default",
            **({"provider_options": self.provider_options} if self.provider_options else {}),
            "onnxruntime_version": self._ort_version,
            "model": str(self.path),
            "input": self.input_name,
            "output": self.output_name,
        }
