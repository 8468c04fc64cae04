"""The run's model files as data: one record per file a stage made, or the reason there is none.

strip, export_onnx, quantize and build_engine return these records; the runner keeps them in each
stage's completion record, and validate, benchmark and deploy read them through
:meth:`pipeline.orchestration.stage.StageContext.model_file`, so no stage imports another to learn what exists.
No torch here: completion records are read by the runner and by light tools.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.status import Status

# The reason a model file is missing when the stage that makes it is switched off in the config (a
# stage that runs records for itself what its own settings leave out). torch and fp32 have none: a
# run that validates has always made them.
_QUANTIZE_OFF = "quantize stage disabled in the config"
WHEN_STAGE_OFF = {
    "int8": _QUANTIZE_OFF,
    "int8_tensorrt": _QUANTIZE_OFF,
    "fp16": _QUANTIZE_OFF,
    "engine-fp16": "no TensorRT fp16 engine requested (engine.enabled / engine.precisions)",
    "engine-int8": "no TensorRT int8 engine requested (engine.enabled / engine.precisions)",
    "int8_qat": "qat.enabled is off in the config",
    "int8_qat_tensorrt": "qat.enabled is off in the config",
    "engine-int8_qat": "no quantization-aware TensorRT engine (qat.enabled, engine.enabled, engine.precisions int8)",
}


@dataclass(frozen=True)
class ModelFile:
    """A model file one or more backends run (or TensorRT builds from), or why there is none."""

    key: str  # "torch", "fp32", "int8", "int8_tensorrt", "int8_qat", "fp16", "engine-fp16", "engine-int8", ...
    path: str | None  # relative to the run folder; None unless the status is "ok"
    format: str = ""  # "pytorch" (state dict), "onnx" or "tensorrt" (serialized engine)
    precision: str = ""  # "fp32", "fp16", "int8"
    status: Status = Status.OK
    reason: str = ""  # why it is not "ok"
    install_hint: str = ""  # for a "skipped" one: what would make it possible on this machine
    metadata: dict[str, Any] = field(default_factory=dict)  # what its stage knows of it (recipe, engine facts)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))  # a plain string read back from JSON, or a typo

    @classmethod
    def skipped(cls, key: str, reason: str, install_hint: str = "") -> "ModelFile":
        return cls(key, None, status=Status.SKIPPED, reason=reason, install_hint=install_hint)

    @classmethod
    def from_metrics(cls, key: str, format: str, precision: str, entry: dict[str, Any]) -> "ModelFile":
        """The record of a file from the entry its stage writes for it in metrics.json: ``status``, then
        ``path`` (when "ok") or ``reason`` and maybe ``install_hint``; the rest is metadata."""
        metadata = {k: v for k, v in entry.items() if k not in ("status", "path", "reason", "install_hint")}
        return cls(key, entry["path"] if entry["status"] == Status.OK else None, format, precision, entry["status"],
                   entry.get("reason", ""), entry.get("install_hint", ""), metadata)

    def located(self, run_dir: Path) -> Path | None:
        """The file's path in ``run_dir``; None when there is no file."""
        return None if self.path is None else Path(run_dir) / self.path

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelFile":
        """Inverse of :meth:`to_dict`; raises ValueError/TypeError on a record it cannot read."""
        return cls(**data)
