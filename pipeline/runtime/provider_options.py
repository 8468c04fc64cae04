"""ONNX Runtime's GPU execution providers, configured in one place.

Without options the TensorRT provider rebuilds its engine whenever an input shape exceeds the range
seen so far (validation feeds several sizes), keeps no engine or timing cache, and runs on GPU 0;
the CUDA provider computes FP32 convolutions in TF32 on Ampere and newer GPUs, which an FP32 parity
check at 1e-4 cannot pass for honest reasons. Here every GPU row gets:

- TensorRT provider: the engine's optimisation profile (min/opt/max shapes of the input), an engine
  cache and a timing cache under ``cache_dir``, FP16 only for FP16 rows, and the device id;
- CUDA provider: the device id and, for FP32 rows, TF32 off (true FP32 for parity).

TensorRT may pick TF32 tactics for FP32 layers and ONNX Runtime's TensorRT provider has no switch
for it, so that row is a ``tf32`` row with its own tolerances (``validate.tf32_atol``,
``validate.tf32_miou_tolerance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"


def _shapes(input_name: str, shape: Sequence[int]) -> str:
    return f"{input_name}:{'x'.join(str(d) for d in shape)}"


def provider_options(provider: str, *, precision: str, device_id: int = 0, profile: dict[str, list[int]] | None = None,
                     input_name: str = "images", cache_dir: Path | None = None) -> dict[str, str]:
    """The options of one execution provider for a row of ``precision`` (ONNX Runtime takes strings)."""
    if provider == TRT_EP:
        options = {"device_id": str(device_id), "trt_fp16_enable": "True" if precision == "fp16" else "False"}
        if profile is not None:
            options.update({f"trt_profile_{key}_shapes": _shapes(input_name, profile[key])
                            for key in ("min", "opt", "max")})
        if cache_dir is not None:
            options.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir / "engines"),
                            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir / "timing")})
        return options
    if provider == CUDA_EP:
        return {"device_id": str(device_id), **({"use_tf32": "0"} if precision == "fp32" else {})}
    return {}

