"""TensorRT engine inference behind the :class:`Predictor` interface.

I/O buffers are torch CUDA tensors (no pycuda/cuda-python dependency), allocated once at the
engine profile's largest shape together with pinned host buffers, and the engine runs on one
stream of its own (TensorRT adds device synchronisations to every call on the default stream);
all of it is released by :meth:`TensorRTPredictor.close` (or leaving a ``with`` block). Loading
checks the engine's metadata first and refuses an engine built by another TensorRT version or on
another GPU (:class:`~pipeline.deployment.tensorrt_engine.EngineIncompatible`); a shape outside the engine's
profile is refused before it reaches TensorRT.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.deployment.tensorrt_engine import (
    EngineMetadata,
    check_compatible,
    cuda_index,
    require_tensorrt,
    shape_in_profile,
)


class CudaResources:
    """Where a predictor's stream and buffers come from: CUDA through torch (a test passes a CPU double)."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def current_device(self) -> Any:
        import torch

        return torch.cuda.device(self.device)

    def stream(self) -> Any:
        import torch

        return torch.cuda.Stream(self.device)

    def on_stream(self, stream: Any) -> Any:
        import torch

        return torch.cuda.stream(stream)

    def device_buffer(self, shape: tuple[int, ...], dtype: Any) -> Any:
        import torch

        return torch.empty(shape, dtype=dtype, device=self.device)

    def pinned_buffer(self, shape: tuple[int, ...], dtype: Any) -> Any:
        import torch

        return torch.empty(shape, dtype=dtype, pin_memory=True)


class TensorRTPredictor:
    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, device: str = "cuda:0", resources: CudaResources | None = None) -> None:
        import torch

        trt, gpu, capability = require_tensorrt(device)  # BackendUnavailable without TensorRT or CUDA
        self.path = Path(engine_path)
        self.meta = EngineMetadata.load(self.path)
        check_compatible(self.meta, trt.__version__, gpu, capability)
        self.precision = self.meta.precision
        self.device = torch.device("cuda", cuda_index(device))
        self._trt_version = trt.__version__
        self._gpu = gpu
        self.resources = resources or CudaResources(self.device)

        with self.resources.current_device():  # TensorRT deserializes onto the current CUDA device
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {self.path}; rebuild it with --force build_engine")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = {name: _torch_dtype(trt, self.engine.get_tensor_dtype(name)) for name in names}

        # Everything a call needs, once: the stream, device buffers at the profile's largest shape and
        # pinned host buffers (so copies are asynchronous). Calls take views of the first elements.
        self.stream = self.resources.stream()
        max_shape = tuple(self.meta.profile["max"])
        if not self.context.set_input_shape(self.input_name, max_shape):
            raise RuntimeError(f"TensorRT refused the profile's own largest shape {max_shape} for {self.path.name}")
        self._device_buffers = {self.input_name: self.resources.device_buffer(max_shape, dtypes[self.input_name])}
        self._host_outputs = {}
        for name in self.output_names:
            largest = tuple(self.context.get_tensor_shape(name))
            self._device_buffers[name] = self.resources.device_buffer(largest, dtypes[name])
            self._host_outputs[name] = self.resources.pinned_buffer(largest, dtypes[name])
        self._host_input = self.resources.pinned_buffer(max_shape, torch.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        import torch

        shape = tuple(images.shape)
        if not shape_in_profile(shape, self.meta.profile):
            raise ValueError(f"input shape {shape} is outside the engine's profile (min {self.meta.profile['min']}, "
                             f"max {self.meta.profile['max']}); rebuild with engine.min_shape/max_shape covering it")
        host_in = _view(self._host_input, shape)
        host_in.copy_(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        device_in = _view(self._device_buffers[self.input_name], shape)
        if not self.context.set_input_shape(self.input_name, shape):
            raise ValueError(f"TensorRT refused input shape {shape} for {self.path.name}")
        with self.resources.on_stream(self.stream):
            device_in.copy_(host_in, non_blocking=True)
            self.context.set_tensor_address(self.input_name, device_in.data_ptr())
            views = {}
            for name in self.output_names:
                views[name] = _view(self._device_buffers[name], tuple(self.context.get_tensor_shape(name)))
                self.context.set_tensor_address(name, views[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for input shape {shape}")
            first = self.output_names[0]
            host_out = _view(self._host_outputs[first], tuple(views[first].shape))
            host_out.copy_(views[first], non_blocking=True)
        self.stream.synchronize()
        return host_out.float().numpy().copy()

    def close(self) -> None:
        """Release the execution context, engine and buffers (the stream goes with the last reference)."""
        self.context = self.engine = None
        self._device_buffers, self._host_outputs, self._host_input = {}, {}, None

    def __enter__(self) -> "TensorRTPredictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": str(self.device),
            "provider": "tensorrt",
            "threads": "n/a",
            "tensorrt_version": self._trt_version,
            "gpu": self._gpu,
            "profile": self.meta.profile,
            "model": str(self.path),
        }


def _view(buffer: Any, shape: tuple[int, ...]) -> Any:
    """The first ``prod(shape)`` elements of a preallocated buffer, as a contiguous tensor of ``shape``."""
    return buffer.view(-1)[: math.prod(shape)].view(shape)


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
