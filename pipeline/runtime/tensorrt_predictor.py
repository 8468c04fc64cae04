"""TensorRT engine inference behind the :class:`Predictor` interface.

I/O buffers are torch CUDA tensors (no pycuda/cuda-python dependency); the engine runs with
``execute_async_v3`` on torch's current stream after ``set_input_shape`` / ``set_tensor_address``.
Loading checks the engine's metadata first and refuses an engine built by another TensorRT
version or on another GPU (:class:`~pipeline.tensorrt_engine.EngineIncompatible`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.tensorrt_engine import EngineMetadata, check_compatible, require_tensorrt, shape_in_profile


class TensorRTPredictor:
    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, device: str = "cuda:0") -> None:
        import torch

        trt, gpu, capability = require_tensorrt(device)  # BackendUnavailable without TensorRT or CUDA
        self.path = Path(engine_path)
        self.meta = EngineMetadata.load(self.path)
        check_compatible(self.meta, trt.__version__, gpu, capability)
        self.precision = self.meta.precision
        self.device = str(torch.device(device))
        self._trt_version = trt.__version__
        self._gpu = gpu

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.path}; rebuild it with --force build_engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._torch_dtypes = {name: _torch_dtype(trt, self.engine.get_tensor_dtype(name)) for name in names}

    def predict(self, images: np.ndarray) -> np.ndarray:
        import torch

        shape = tuple(images.shape)
        if not shape_in_profile(shape, self.meta.profile):
            raise ValueError(f"input shape {shape} is outside the engine's profile {self.meta.profile}; "
                             "rebuild with engine.min_shape/max_shape covering it")
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        x = x.to(self._torch_dtypes[self.input_name])
        self.context.set_input_shape(self.input_name, shape)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outputs = {}
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._torch_dtypes[name],
                              device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        stream = torch.cuda.current_stream(torch.device(self.device))
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for input shape {shape}")
        stream.synchronize()
        return outputs[self.output_names[0]].float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "provider": "tensorrt",
            "threads": "n/a",
            "tensorrt_version": self._trt_version,
            "gpu": self._gpu,
            "typing": self.meta.typing,
            "profile": self.meta.profile,
            "model": str(self.path),
        }


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise TypeError(f"unsupported TensorRT I/O dtype {dtype}")
    return table[dtype]
