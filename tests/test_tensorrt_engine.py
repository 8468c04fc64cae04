"""The TensorRT path without TensorRT: versions, profile, engine metadata, refusal, skip report, and
the engine build driven against a recording fake of the TensorRT objects (calls, arguments, order).
A static check of every TensorRT call site against the real bindings is in test_tensorrt_api.py."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.deployment import tensorrt_engine as te
from pipeline.deployment.tensorrt_engine import (
    EngineIncompatible,
    EngineMetadata,
    build_engine,
    cache_key,
    check_compatible,
    parse_version,
    profile_shapes,
    shape_in_profile,
)
from pipeline.model_files import ModelFile
from pipeline.runtime.backends import Backend, open_backend
from pipeline.runtime.base import BackendUnavailable


def meta(**changes) -> EngineMetadata:
    base = dict(tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                precision="fp16", input_name="images", output_names=["logits"],
                profile=profile_shapes(64, 8), onnx_sha256="ab" * 32, onnx_file="student_fp16.onnx")
    return EngineMetadata(**{**base, **changes})


@pytest.mark.parametrize("text, expected", [("10.13.0.35", (10, 13, 0, 35)), ("11.0.0rc1", (11, 0, 0)),
                                            ("8.6.1.post1", (8, 6, 1)), (" 10.0 ", (10, 0))])
def test_versions_are_parsed_ignoring_suffixes(text, expected):
    assert parse_version(text) == expected


def test_garbage_is_not_a_version():
    with pytest.raises(ValueError, match="not a version"):
        parse_version("tensorrt")


class Recorder:
    """A stand-in for the tensorrt module: every call on it, or on what it returns, is logged."""

    def __init__(self, version: str, accept_timing_cache: bool = True) -> None:
        self.__version__ = version
        self.calls: list[tuple] = []
        self.accept_timing_cache = accept_timing_cache

    def __getattr__(self, name: str):
        return _Recorded(self, name)


class _Recorded:
    RETURNS = {"parse_from_file": True, "num_outputs": 1, "num_errors": 0, "name": "images",
               "build_serialized_network": b"engine-bytes", "serialize": b"timing-bytes",
               "get_engine_information": json.dumps({"Layers": [
                   {"Name": "conv1", "Outputs": [{"Format/Datatype": "Channel major INT8 format where C % 32 == 0"}]},
                   {"Name": "resize", "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
                   {"Name": "conv2", "Outputs": [{"Format/Datatype": "Channel major INT8 format where C % 32 == 0"}]}]})}

    def __init__(self, recorder: Recorder, path: str) -> None:
        self._recorder, self._path = recorder, path

    def __getattr__(self, name: str):
        if name in ("num_outputs", "num_errors", "name"):
            return self.RETURNS[name]
        return _Recorded(self._recorder, f"{self._path}.{name}")

    def __int__(self) -> int:
        return 5  # an enum member's value

    def __call__(self, *args, **kwargs):
        method = self._path.rsplit(".", 1)[-1]
        self._recorder.calls.append((method, args, kwargs))
        if method == "set_timing_cache":
            accepted = self._recorder.accept_timing_cache
            self._recorder.accept_timing_cache = True  # the fresh cache is accepted
            return accepted
        return self.RETURNS.get(method, _Recorded(self._recorder, method))


def build_with(monkeypatch, tmp_path: Path, version: str, **recorder_options) -> Recorder:
    import contextlib

    import torch

    trt = Recorder(version, **recorder_options)
    monkeypatch.setattr(te, "require_tensorrt", lambda device: (trt, "NVIDIA H100", "9.0"))
    monkeypatch.setattr(te, "cuda_index", lambda device: int(device.rpartition(":")[2] or 0))
    devices = []
    monkeypatch.setattr(torch.cuda, "device", lambda index: devices.append(index) or contextlib.nullcontext())
    onnx = tmp_path / "student_int8.onnx"
    onnx.write_bytes(b"onnx")
    build_engine(onnx, tmp_path / "student_int8.engine", precision="int8", profile=profile_shapes(64, 8),
                 cache_dir=tmp_path / "cache", device="cuda:1")
    trt.devices = devices
    return trt


def test_an_engine_is_built_strongly_typed_on_the_requested_gpu_without_precision_flags(monkeypatch, tmp_path):
    trt = build_with(monkeypatch, tmp_path, "11.4.0.106")
    methods = [call[0] for call in trt.calls]
    assert trt.devices == [1]
    assert methods.index("create_network") < methods.index("parse_from_file") < methods.index("create_builder_config")
    assert methods.index("add_optimization_profile") < methods.index("build_serialized_network")
    assert "set_flag" not in methods
    assert next(call for call in trt.calls if call[0] == "create_network")[1] == (0,)  # 11: always strongly typed
    set_shape = next(call for call in trt.calls if call[0] == "set_shape")
    assert set_shape[1] == ("images", [1, 3, 32, 32], [1, 3, 64, 64], [8, 3, 128, 128])
    assert (tmp_path / "student_int8.engine").read_bytes() == b"engine-bytes"
    saved = EngineMetadata.load(tmp_path / "student_int8.engine")
    assert saved.precision == "int8" and saved.layer_precisions == {"int8": 2, "fp16": 1}
    assert methods.index("build_serialized_network") < methods.index("create_engine_inspector")


def test_layer_precisions_are_counted_from_the_inspector_report():
    report = {"Layers": [{"Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
                         {"Outputs": [{"Format/Datatype": "Row major linear Half"}]},
                         {"Outputs": []}, "a layer name only (verbosity below DETAILED)"]}
    assert te.layer_precisions(report) == {"fp32": 1, "fp16": 1}


def test_tensorrt_10_asks_for_a_strongly_typed_network_with_the_creation_flag(monkeypatch, tmp_path):
    trt = build_with(monkeypatch, tmp_path, "10.13.3.9")
    assert next(call for call in trt.calls if call[0] == "create_network")[1] == (1 << 5,)


def test_a_rejected_timing_cache_is_replaced_by_a_fresh_one_and_said(monkeypatch, tmp_path, capsys):
    trt = build_with(monkeypatch, tmp_path, "11.4.0.106", accept_timing_cache=False)
    caches = [call for call in trt.calls if call[0] == "create_timing_cache"]
    assert len(caches) == 2 and caches[1][1] == (b"",)
    assert "timing cache" in (out := capsys.readouterr().out) and "was rejected" in out
    assert [call[0] for call in trt.calls].count("set_timing_cache") == 2


def test_default_profile_spans_half_to_twice_the_training_size_optimised_for_batch_one():
    assert profile_shapes(64, 8) == {"min": [1, 3, 32, 32], "opt": [1, 3, 64, 64], "max": [8, 3, 128, 128]}
    custom = profile_shapes(64, 8, max_shape=(4, 3, 256, 256))
    assert custom["max"] == [4, 3, 256, 256] and custom["opt"] == [1, 3, 64, 64]
    assert shape_in_profile((2, 3, 100, 64), custom) and not shape_in_profile((8, 3, 64, 64), custom)


@pytest.mark.parametrize("kwargs", [dict(min_shape=(2, 3, 64, 64)), dict(max_shape=(8, 3, 32, 32)),
                                    dict(opt_shape=(1, 1, 64, 64))])
def test_inconsistent_profiles_are_refused(kwargs):
    with pytest.raises(ValueError, match="engine"):
        profile_shapes(64, 1, **kwargs)


def test_engine_metadata_round_trips_beside_the_engine(tmp_path: Path):
    engine = tmp_path / "student_fp16.engine"
    engine.write_bytes(b"serialized")
    written = meta().save(engine)
    assert written == tmp_path / "student_fp16.engine.json"
    assert EngineMetadata.load(engine) == meta()


def test_an_engine_without_metadata_is_not_trusted(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="rebuild"):
        EngineMetadata.load(tmp_path / "x.engine")


def test_cache_key_separates_version_gpu_precision_and_model():
    keys = {meta().cache_key(), meta(tensorrt_version="10.14.0").cache_key(), meta(gpu_name="Orin").cache_key(),
            meta(precision="int8").cache_key(), meta(onnx_sha256="cd" * 32).cache_key()}
    assert len(keys) == 5
    assert "/" not in cache_key("10.0", "NVIDIA A100/80GB", "8.0", "fp16", "ab" * 32)


def test_an_engine_from_another_tensorrt_or_gpu_is_refused_with_the_rebuild_command():
    check_compatible(meta(), "10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")  # same: fine
    with pytest.raises(EngineIncompatible, match="built by TensorRT 10.13.0.35, this is TensorRT 11.0.0") as err:
        check_compatible(meta(), "11.0.0", "NVIDIA H100 80GB HBM3", "9.0")
    assert "--force build_engine" in err.value.install_hint
    with pytest.raises(EngineIncompatible, match="Orin"):
        check_compatible(meta(), "10.13.0.35", "Orin", "8.7")


def test_the_predictor_refuses_a_foreign_engine_before_deserializing_it(tmp_path: Path, monkeypatch):
    from pipeline.runtime.tensorrt_predictor import TensorRTPredictor

    engine = tmp_path / "student_fp16.engine"
    engine.write_bytes(b"not an engine")
    meta().save(engine)
    fake_trt = types.SimpleNamespace(__version__="11.0.0")
    monkeypatch.setattr("pipeline.runtime.tensorrt_predictor.require_tensorrt",
                        lambda device: (fake_trt, "NVIDIA H100 80GB HBM3", "9.0"))
    with pytest.raises(EngineIncompatible, match="refusing to load the fp16 engine"):
        TensorRTPredictor(engine)


def test_missing_tensorrt_is_a_skip_with_the_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    with pytest.raises(BackendUnavailable) as err:
        te.import_tensorrt()
    assert err.value.to_dict()["status"] == "skipped"
    assert "pip install tensorrt" in err.value.install_hint


def test_open_backend_turns_unavailability_into_an_honest_row(tmp_path):
    opened_on = []

    def unavailable(path):
        opened_on.append(path)
        raise EngineIncompatible("refusing to load the int8 engine: built elsewhere", "rebuild it here")

    opened = open_backend(Backend("tensorrt-int8", "tensorrt", "int8", "engine-int8", unavailable),
                          {"engine-int8": ModelFile("engine-int8", "build_engine/x.engine")}, tmp_path)
    assert opened.predictor is None and opened_on == [tmp_path / "build_engine" / "x.engine"]
    assert opened.unavailable_row()["status"] == "skipped"
    assert opened.unavailable_row()["install_hint"] == "rebuild it here"
    failed = open_backend(Backend("onnxruntime-int8", "onnxruntime", "int8", "int8", unavailable),
                          {"int8": ModelFile("int8", None, status="export failed", reason="quantization crashed")},
                          tmp_path)
    assert failed.status == "export failed" and failed.reason == "quantization crashed" and len(opened_on) == 1
    missing = open_backend(Backend("onnxruntime-fp16", "onnxruntime-cuda", "fp16", "fp16", unavailable), {}, tmp_path)
    assert (missing.status, missing.reason) == ("skipped", "no fp16 model in this run")


class CpuResources:
    """The predictor's CUDA resources on the CPU, counting what it asks for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def current_device(self):
        import contextlib

        return contextlib.nullcontext()

    def stream(self):
        self.asked.append("stream")
        return types.SimpleNamespace(cuda_stream=7, synchronize=lambda: None)

    def on_stream(self, stream):
        import contextlib

        return contextlib.nullcontext()

    def device_buffer(self, shape, dtype):
        import torch

        self.asked.append("device_buffer")
        return torch.zeros(shape, dtype=dtype)

    def pinned_buffer(self, shape, dtype):
        import torch

        self.asked.append("pinned_buffer")
        return torch.zeros(shape, dtype=dtype)


class FakeExecution:
    def __init__(self) -> None:
        self.shape, self.addresses, self.streams = None, {}, []

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shape[0], 10, *self.shape[2:])

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream):
        self.streams.append(stream)
        return True


def fake_predictor(monkeypatch, tmp_path):
    from pipeline.runtime import tensorrt_predictor as tp

    execution = FakeExecution()
    engine = types.SimpleNamespace(num_io_tensors=2, get_tensor_name=lambda i: ["images", "logits"][i],
                                   get_tensor_mode=lambda name: "in" if name == "images" else "out",
                                   get_tensor_dtype=lambda name: "f32", create_execution_context=lambda: execution)
    trt = types.SimpleNamespace(__version__="10.13.0.35", float32="f32", float16="f16", int32="i32", int8="i8",
                                bool="b", Logger=lambda level: None, TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
                                Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine))
    trt.Logger.WARNING = 0
    monkeypatch.setattr(tp, "require_tensorrt", lambda device: (trt, "NVIDIA H100 80GB HBM3", "9.0"))
    monkeypatch.setattr(tp, "cuda_index", lambda device: 0)
    path = tmp_path / "student_fp16.engine"
    path.write_bytes(b"engine")
    meta().save(path)
    resources = CpuResources()
    return tp.TensorRTPredictor(path, resources=resources), resources, execution


def test_the_predictor_sets_up_one_stream_and_its_buffers_once_however_many_calls(monkeypatch, tmp_path):
    predictor, resources, execution = fake_predictor(monkeypatch, tmp_path)
    for shape in [(1, 3, 64, 64), (2, 3, 48, 48), (8, 3, 128, 128)] * 3:
        assert predictor.predict(np.ones(shape, np.float32)).shape == (shape[0], 10, *shape[2:])
    assert resources.asked.count("stream") == 1
    assert resources.asked.count("device_buffer") == 2 and resources.asked.count("pinned_buffer") == 2
    assert execution.streams == [7] * 9  # its own stream, never the default one (0)


def test_the_predictor_refuses_a_shape_outside_the_profile_naming_it(monkeypatch, tmp_path):
    predictor, _, execution = fake_predictor(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match=r"outside the engine's profile \(min \[1, 3, 32, 32\], max \[8, 3, 128, 128\]\)"):
        predictor.predict(np.ones((16, 3, 64, 64), np.float32))
    assert execution.streams == []
    with predictor:
        pass
    assert predictor.engine is None and predictor.context is None
