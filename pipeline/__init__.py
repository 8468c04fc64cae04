"""Deployment-oriented model compression: teacher -> distilled student -> ONNX/TensorRT, validated."""

__version__ = "0.1.0"
