"""The TensorRT path without TensorRT: versions, profile, engine metadata, refusal, skip report."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from pipeline import tensorrt_engine as te
from pipeline.backends import Artifact, Backend, open_backend
from pipeline.runtime.base import BackendUnavailable
from pipeline.tensorrt_engine import (
    EngineIncompatible,
    EngineMetadata,
    builder_flag_names,
    cache_key,
    check_compatible,
    network_typing,
    parse_version,
    profile_shapes,
    shape_in_profile,
)


def meta(**changes) -> EngineMetadata:
    base = dict(tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                precision="fp16", typing="strong", input_name="images", output_names=["logits"],
                profile=profile_shapes(64, 8), onnx_sha256="ab" * 32, onnx_file="student_fp16.onnx")
    return EngineMetadata(**{**base, **changes})


@pytest.mark.parametrize("text, expected", [("10.13.0.35", (10, 13, 0, 35)), ("11.0.0rc1", (11, 0, 0)),
                                            ("8.6.1.post1", (8, 6, 1)), (" 10.0 ", (10, 0))])
def test_versions_are_parsed_ignoring_suffixes(text, expected):
    assert parse_version(text) == expected


def test_garbage_is_not_a_version():
    with pytest.raises(ValueError, match="not a version"):
        parse_version("tensorrt")


def test_tensorrt_11_has_only_strongly_typed_networks_and_no_precision_flags():
    assert network_typing("11.0.0", "strong") == "strong"
    with pytest.raises(ValueError, match="no FP16/INT8 builder flags"):
        network_typing("11.1.0", "flags")
    assert network_typing("10.13.0", "flags") == "flags"  # TensorRT 10 supports both paths
    assert builder_flag_names("fp16", "strong") == [] and builder_flag_names("int8", "strong") == []
    assert builder_flag_names("fp16", "flags") == ["FP16"]
    assert "INT8" in builder_flag_names("int8", "flags")


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


def test_open_backend_turns_unavailability_into_an_honest_row():
    def unavailable(_):
        raise EngineIncompatible("refusing to load the int8 engine: built elsewhere", "rebuild it here")

    opened = open_backend(Backend("tensorrt-int8", "tensorrt", "int8", "engine-int8", unavailable),
                          {"engine-int8": Artifact(Path("x.engine"))})
    assert opened.predictor is None
    assert opened.unavailable_row()["status"] == "skipped"
    assert opened.unavailable_row()["install_hint"] == "rebuild it here"
    failed = open_backend(Backend("onnxruntime-int8", "onnxruntime", "int8", "int8", unavailable),
                          {"int8": Artifact(None, "export failed", "quantization crashed")})
    assert failed.status == "export failed" and failed.reason == "quantization crashed"
