"""TensorRT engines from the FP16 and Q/DQ INT8 ONNX models, with the facts that make them safe.

An engine is tied to the TensorRT version and the GPU that built it, so every engine has a JSON
file beside it (:class:`EngineMetadata`: TensorRT version, GPU, compute capability, precision,
input profile, ONNX sha256) and loading one built elsewhere is refused with the rebuild command.

Networks are strongly typed on every supported TensorRT (10 and 11): precision comes from the
ONNX itself (FP16 weights, or Q/DQ nodes), never from builder flags, which TensorRT 11 removed.

Everything here except :func:`build_engine` runs without TensorRT (and is tested so).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.artifacts import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file
from pipeline.errors import BackendUnavailable

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig

TENSORRT_INSTALL_HINT = ("pip install tensorrt  (needs an NVIDIA GPU, its driver and CUDA 12/13; "
                         "see https://docs.nvidia.com/deeplearning/tensorrt/latest/installing-tensorrt/installing.html)")
CUDA_INSTALL_HINT = "run on a machine with an NVIDIA GPU and a CUDA build of torch (pip install torch --index-url ...cu12x)"
DEFAULT_CACHE_DIR = Path("~/.cache/pipeline/tensorrt")
METADATA_SUFFIX = ".json"


class EngineIncompatible(BackendUnavailable):
    """The engine was built by another TensorRT version or on another GPU; it must be rebuilt."""


# ------------------------------------------------------------------------- versions
def parse_version(text: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> (10, 13, 0, 35); pre-release/local suffixes are ignored ("11.0.0rc1" -> (11, 0, 0))."""
    parts: list[int] = []
    for piece in str(text).strip().split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"not a version string: {text!r}")
    return tuple(parts)


def installed_tensorrt_version() -> str | None:
    """The installed TensorRT Python package's version, or None; does not import (or need) CUDA."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu11"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def always_strongly_typed(version: str) -> bool:
    """TensorRT >= 11 builds only strongly typed networks; 10 needs the STRONGLY_TYPED creation flag."""
    return parse_version(version)[0] >= 11


# ------------------------------------------------------------------------- profile
def profile_shapes(
    image_size: int,
    max_batch: int,
    channels: int = 3,
    min_shape: tuple[int, ...] | None = None,
    opt_shape: tuple[int, ...] | None = None,
    max_shape: tuple[int, ...] | None = None,
) -> dict[str, list[int]]:
    """Optimisation profile (NCHW min/opt/max) for the dynamic batch/H/W input.

    Default: batch 1..max_batch, sides image_size/2 .. 2*image_size, optimised for batch 1 at
    image_size (the latency case). Each explicit shape replaces its default; the result must be
    ordered min <= opt <= max in every dimension.
    """
    if image_size < 2 or max_batch < 1:
        raise ValueError(f"need image_size >= 2 and max_batch >= 1, got {image_size}, {max_batch}")
    side = image_size
    shapes = {
        "min": list(min_shape or (1, channels, max(side // 2, 1), max(side // 2, 1))),
        "opt": list(opt_shape or (1, channels, side, side)),
        "max": list(max_shape or (max_batch, channels, 2 * side, 2 * side)),
    }
    for name, shape in shapes.items():
        if len(shape) != 4 or any(d < 1 for d in shape) or shape[1] != channels:
            raise ValueError(f"engine {name}_shape must be 4 positive dims (N, {channels}, H, W), got {shape}")
    if not all(a <= b <= c for a, b, c in zip(shapes["min"], shapes["opt"], shapes["max"])):
        raise ValueError(f"engine profile must satisfy min <= opt <= max in every dim, got {shapes}")
    return shapes


def engine_profile(config: PipelineConfig) -> dict[str, list[int]]:
    """The profile of a run's config (``engine.*``, ``data.image_size``): what its engines and ONNX
    Runtime's TensorRT provider optimise for."""
    engine = config.engine
    return profile_shapes(config.data.image_size, engine.max_batch, min_shape=engine.min_shape,
                          opt_shape=engine.opt_shape, max_shape=engine.max_shape)


def shape_in_profile(shape: tuple[int, ...], profile: dict[str, list[int]]) -> bool:
    return len(shape) == 4 and all(lo <= d <= hi for d, lo, hi in zip(shape, profile["min"], profile["max"]))


# ------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class EngineMetadata:
    """What an engine depends on; saved as ``<engine>.json`` beside it."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str  # "fp16" | "int8"
    input_name: str
    output_names: list[str]
    profile: dict[str, list[int]]
    onnx_sha256: str
    onnx_file: str
    built_at: str = ""
    # Layers by the precision TensorRT chose for their outputs ({"int8": 40, "fp16": 25}), from the
    # engine inspector: proof of what the engine runs in, whatever the ONNX asked for.
    layer_precisions: dict[str, int] | None = None

    def save(self, engine_path: Path) -> Path:
        path = metadata_path(engine_path)
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, engine_path: Path) -> "EngineMetadata":
        path = metadata_path(engine_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: an engine without its metadata cannot be checked for "
                                    "compatibility; rebuild it with `python -m pipeline run ... --force build_engine`")
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def cache_key(self) -> str:
        return cache_key(self.tensorrt_version, self.gpu_name, self.compute_capability, self.precision,
                         self.onnx_sha256, self.profile)


def metadata_path(engine_path: Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + METADATA_SUFFIX)


def check_compatible(meta: EngineMetadata, tensorrt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Raise :class:`EngineIncompatible` unless this TensorRT version and GPU built the engine.

    TensorRT engines are not portable across TensorRT versions (the runtime refuses or
    misbehaves) nor across GPU models; we compare the full version and the GPU's name and
    compute capability.
    """
    problems = []
    if meta.tensorrt_version != tensorrt_version:
        problems.append(f"built by TensorRT {meta.tensorrt_version}, this is TensorRT {tensorrt_version}")
    if meta.gpu_name != gpu_name or meta.compute_capability != compute_capability:
        problems.append(f"built on {meta.gpu_name} (sm {meta.compute_capability}), this GPU is {gpu_name} "
                        f"(sm {compute_capability})")
    if problems:
        raise EngineIncompatible(
            f"refusing to load the {meta.precision} engine: " + "; ".join(problems),
            "rebuild it here: python -m pipeline run CONFIG --force build_engine",
        )


def cache_key(tensorrt_version: str, gpu_name: str, compute_capability: str, precision: str, onnx_sha256: str,
              profile: dict[str, list[int]] | None = None) -> str:
    """File-name-safe key: an engine is reusable only for the same TensorRT, GPU, precision and ONNX."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    shapes = "" if profile is None else "-" + "_".join("x".join(map(str, profile[k])) for k in ("min", "opt", "max"))
    return f"trt{tensorrt_version}-{gpu}-sm{compute_capability}-{precision}-strong-{onnx_sha256[:16]}{shapes}"


# ------------------------------------------------------------------------- environment
def import_tensorrt() -> Any:
    """``import tensorrt`` or :class:`BackendUnavailable` with the install command."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"TensorRT is not installed ({exc})", TENSORRT_INSTALL_HINT) from exc
    return trt


def cuda_device_facts(device: str = "cuda:0") -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of ``device``; BackendUnavailable without CUDA."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device is visible (torch.cuda.is_available() is False)", CUDA_INSTALL_HINT)
    index = cuda_index(device)
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def cuda_index(device: str) -> int:
    """``"cuda:1"`` -> 1; ``"cuda"`` -> the current device."""
    import torch

    parsed = torch.device(device)
    if parsed.type != "cuda":
        raise ValueError(f"TensorRT runs on a CUDA device, got {device!r}")
    return parsed.index if parsed.index is not None else torch.cuda.current_device()


def require_tensorrt(device: str = "cuda:0") -> tuple[Any, str, str]:
    """(trt module, GPU name, compute capability), or BackendUnavailable saying what is missing."""
    trt = import_tensorrt()
    gpu, capability = cuda_device_facts(device)
    return trt, gpu, capability


# ------------------------------------------------------------------------- build
def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    precision: str,
    profile: dict[str, list[int]],
    workspace_mb: int = 1024,
    cache_dir: Path | None = None,
    device: str = "cuda:0",
) -> tuple[EngineMetadata, bool]:
    """Build (or take from the cache) the engine of ``onnx_path`` on ``device``; returns (metadata, from_cache).

    ``onnx_path`` carries its precision (the FP16 model, or the Q/DQ INT8 model): the network is
    strongly typed. The timing cache is shared by all builds for one TensorRT version + GPU.
    """
    import torch

    trt, gpu, capability = require_tensorrt(device)
    with torch.cuda.device(cuda_index(device)):  # TensorRT builds on the current CUDA device
        return _build(trt, gpu, capability, Path(onnx_path), Path(engine_path), precision, profile, workspace_mb,
                      Path(cache_dir or DEFAULT_CACHE_DIR).expanduser())


def _build(trt: Any, gpu: str, capability: str, onnx_path: Path, engine_path: Path, precision: str,
           profile: dict[str, list[int]], workspace_mb: int, cache: Path) -> tuple[EngineMetadata, bool]:
    version = trt.__version__
    onnx_sha = sha256_file(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)

    # Parse first: the input/output names go into the metadata (and the cache key is then complete).
    flags = 0
    if not always_strongly_typed(version):
        # TensorRT 10 only. TensorRT 11 deprecates this flag and ignores it: every network is strongly typed.
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    input_name = network.get_input(0).name
    output_names = [network.get_output(i).name for i in range(network.num_outputs)]
    meta = EngineMetadata(tensorrt_version=version, gpu_name=gpu, compute_capability=capability, precision=precision,
                          input_name=input_name, output_names=output_names, profile=profile,
                          onnx_sha256=onnx_sha, onnx_file=onnx_path.name,
                          built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    cached = cache / f"{meta.cache_key()}.engine"
    if cached.is_file() and metadata_path(cached).is_file():
        _copy_engine(cached, engine_path)
        return EngineMetadata.load(engine_path), True

    config = builder.create_builder_config()
    # Not deprecated: TensorRT 10's docstring of WORKSPACE mentions the deprecated IAlgorithmSelector.
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    optimisation = builder.create_optimization_profile()
    optimisation.set_shape(input_name, profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(optimisation)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the inspector

    timing_path = cache / f"timing-trt{version}-{re.sub(r'[^A-Za-z0-9]+', '-', gpu).lower()}.cache"
    timing_cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        # A cache from another TensorRT or GPU (or a damaged file): build without it and replace it afterwards.
        print(f"[build_engine] timing cache {timing_path} was rejected (another TensorRT/GPU, or damaged); "
              "building with a fresh one")
        if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            raise RuntimeError("TensorRT rejected an empty timing cache")

    print(f"[build_engine] building {precision} engine from {onnx_path.name} (TensorRT {version}, {gpu}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build the {precision} engine from {onnx_path}; see the log above")
    meta = replace(meta, layer_precisions=_inspect(trt, logger, serialized))
    print(f"[build_engine] {precision} engine layers by precision: {meta.layer_precisions}")
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
    atomic_write_bytes(cached, bytes(serialized))
    meta.save(cached)
    _copy_engine(cached, engine_path)
    return meta, False


def layer_precisions(engine_information: dict[str, Any]) -> dict[str, int]:
    """Count the layers of an engine inspector JSON report by the data type of their first output."""
    counts: dict[str, int] = {}
    for layer in engine_information.get("Layers", []):
        if not isinstance(layer, dict) or not layer.get("Outputs"):
            continue
        described = str(layer["Outputs"][0].get("Format/Datatype", "")).lower()
        kind = next((name for name, words in _PRECISION_WORDS if any(word in described for word in words)), "other")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


_PRECISION_WORDS = (("int8", ("int8",)), ("fp16", ("fp16", "half")), ("bf16", ("bf16",)), ("fp8", ("fp8",)),
                    ("fp32", ("fp32", "float")), ("int32", ("int32",)), ("int64", ("int64",)))


def _inspect(trt: Any, logger: Any, serialized: Any) -> dict[str, int]:
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(bytes(serialized))
    inspector = engine.create_engine_inspector()
    return layer_precisions(json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))


def _copy_engine(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    with atomic_path(metadata_path(dst)) as tmp:
        shutil.copyfile(metadata_path(src), tmp)
