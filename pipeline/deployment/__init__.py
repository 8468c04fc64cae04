"""Deployment: the exported ONNX model, its INT8 and FP16 variants and TensorRT engines."""
