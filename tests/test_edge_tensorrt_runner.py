"""The edge script's TensorRT runner, driven by recording fakes of tensorrt and cuda-python: one
stream and one allocation per buffer however many calls, pinned host memory, shapes checked
against the engine's profile with a message naming it, and everything released on close."""

from __future__ import annotations

import ctypes
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.edge import run_onnx

PROFILE = ((1, 3, 32, 32), (1, 3, 64, 64), (4, 3, 128, 128))


class FakeCudart:
    """cuda-python's runtime API over real host memory, counting every call."""

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's name
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.memory: dict[int, ctypes.Array] = {}

    def _alloc(self, name: str, nbytes: int):
        self.calls.append(name)
        buffer = (ctypes.c_byte * nbytes)()
        self.memory[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaMalloc(self, nbytes):  # noqa: N802
        return self._alloc("cudaMalloc", nbytes)

    def cudaMallocHost(self, nbytes):  # noqa: N802
        return self._alloc("cudaMallocHost", nbytes)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        self.calls.append("cudaMemcpyAsync")
        ctypes.memmove(int(dst), int(src), nbytes)
        return (0,)

    def __getattr__(self, name):
        def call(*args):
            self.calls.append(name)
            return (0, "stream-1") if name == "cudaStreamCreate" else (0,)
        return call


class FakeContext:
    def __init__(self) -> None:
        self.shape = None
        self.executions = 0

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n, _, h, w = self.shape
        return (n, 10, h, w)

    def set_tensor_address(self, name, address):
        pass

    def execute_async_v3(self, stream):
        self.executions += 1
        return True


def fake_tensorrt(context: FakeContext) -> types.ModuleType:
    engine = types.SimpleNamespace(
        num_io_tensors=2, get_tensor_name=lambda i: ["images", "logits"][i],
        get_tensor_mode=lambda name: "in" if name == "images" else "out",
        get_tensor_profile_shape=lambda name, index: PROFILE, get_tensor_dtype=lambda name: "float32",
        create_execution_context=lambda: context)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.3.9"
    trt.Logger = type("Logger", (), {"WARNING": 0, "__init__": lambda self, level: None})
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in")
    trt.nptype = lambda dtype: np.float32
    return trt


@pytest.fixture
def runner(monkeypatch, tmp_path):
    context, cudart = FakeContext(), FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(context))
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    engine = tmp_path / "student_fp16.engine"
    engine.write_bytes(b"engine")
    run = run_onnx.TensorRTRunner(Path(engine))
    return run, context, cudart


def test_one_stream_and_one_allocation_per_buffer_however_many_calls(runner):
    run, context, cudart = runner
    for shape in [(1, 3, 64, 64), (2, 3, 48, 48), (4, 3, 128, 128)] * 3:
        out = run(np.ones(shape, np.float32))
        assert out.shape == (shape[0], 10, *shape[2:])
    assert cudart.calls.count("cudaStreamCreate") == 1
    assert cudart.calls.count("cudaMalloc") == 2 and cudart.calls.count("cudaMallocHost") == 2
    assert context.executions == 9 and "cudaFree" not in cudart.calls


def test_an_input_outside_the_profile_is_refused_naming_it(runner):
    run, context, _ = runner
    with pytest.raises(SystemExit, match=r"outside the engine's profile \(min \(1, 3, 32, 32\), max \(4, 3, 128, 128\)\)"):
        run(np.ones((8, 3, 64, 64), np.float32))
    assert context.executions == 0


def test_close_frees_every_buffer_and_the_stream(runner):
    run, _, cudart = runner
    run(np.ones((1, 3, 64, 64), np.float32))
    run.close()
    assert cudart.calls.count("cudaFree") == 2 and cudart.calls.count("cudaFreeHost") == 2
    assert cudart.calls.count("cudaStreamDestroy") == 1
