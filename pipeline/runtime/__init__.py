"""Inference backends behind one :class:`Predictor` interface."""

from __future__ import annotations

from pipeline.runtime.base import BackendUnavailable, Predictor
from pipeline.runtime.onnxruntime_predictor import OnnxRuntimePredictor
from pipeline.runtime.tensorrt_predictor import TensorRTPredictor
from pipeline.runtime.torch_predictor import TorchPredictor

__all__ = [
    "BackendUnavailable",
    "TensorRTPredictor",
    "OnnxRuntimePredictor",
    "Predictor",
    "TorchPredictor",
    "available_onnxruntime_providers",
]


def available_onnxruntime_providers() -> list[str]:
    """Execution providers the installed onnxruntime wheel offers ([] when it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())
