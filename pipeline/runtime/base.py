"""The one interface every inference backend implements.

Validation and benchmarking talk only to :class:`Predictor`, so a new backend (TensorRT, a
different ONNX Runtime provider) plugs in without touching them. A backend that cannot run on
this machine raises :class:`BackendUnavailable`, which reports turn into an honest "skipped"
row with the reason and the command that would fix it, instead of a crash or a silent fallback.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.errors import BackendUnavailable

__all__ = ["BackendUnavailable", "Predictor"]


@runtime_checkable
class Predictor(Protocol):
    """Float32 NCHW images in, float32 NCHW logits out, whatever runs underneath."""

    backend: str  # "pytorch", "onnxruntime", "tensorrt"
    precision: str  # "fp32", "tf32" (FP32 model that may run in TF32), "fp16", "int8"
    device: str  # "cpu", "cuda", "cuda:0"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Logits (B, K, H, W) float32 for images (B, 3, H, W) float32 (already normalised)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a latency or accuracy figure needs beside it: backend, precision, provider(s),
        threads and library versions."""
        ...


