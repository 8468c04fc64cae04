"""What a stage is: its inputs, the config it reads, the code it runs, and what it returns.

Stages live in the top-level ``stages/`` package, one module each; the runner only sees this
interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import read_json
from pipeline.config import PipelineConfig
from pipeline.model_files import WHEN_STAGE_OFF, ModelFile

RECORD_NAME = "_complete.json"


def _always(_: PipelineConfig) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """A pipeline step. ``run`` reads its inputs' outputs and writes into ``ctx.dir``."""

    name: str
    run: Callable[["StageContext"], "StageResult"]
    inputs: tuple[str, ...] = ()
    # Dotted config keys whose values are part of the fingerprint (changing them re-runs the stage).
    config_keys: tuple[str, ...] = ()
    # Facts of this machine that the stage's outputs depend on (part of the fingerprint).
    machine: Callable[[PipelineConfig], dict[str, Any]] | None = None
    enabled: Callable[[PipelineConfig], bool] = _always
    description: str = ""
    # Under torchrun: True = every rank runs it (DDP training); False = rank 0 alone, the others wait.
    distributed: bool = False


@dataclass
class StageResult:
    """What a stage produced: files (relative to its folder), metrics for metrics.json and, for a stage
    that makes model files, their records (each "ok" one's path is one of ``outputs``)."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_files: tuple[ModelFile, ...] = ()


@dataclass(frozen=True)
class StageRecord:
    """The completion record a finished stage leaves in its folder (written last, atomically)."""

    stage: str
    fingerprint: str
    parts: dict[str, Any]
    outputs: dict[str, dict[str, str]]  # name -> {"path": relative path, "sha256": digest}
    metrics: dict[str, Any]
    seconds: float
    finished_at: str
    model_files: tuple[ModelFile, ...] = ()  # a default: records written before there were any still load

    @classmethod
    def load(cls, stage_dir: Path) -> "StageRecord | None":
        path = stage_dir / RECORD_NAME
        if not path.is_file():
            return None
        try:
            data = read_json(path)
            files = tuple(ModelFile.from_dict(entry) for entry in data.pop("model_files", ()))
            return cls(**data, model_files=files)
        except (ValueError, TypeError, AttributeError):
            return None  # an unreadable record counts as "not done"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "model_files": [entry.to_dict() for entry in self.model_files]}

    def output_path(self, stage_dir: Path, name: str) -> Path:
        return stage_dir / self.outputs[name]["path"]


@dataclass
class StageContext:
    """Everything a running stage may use. Stages never reach outside their own folder to write."""

    config: PipelineConfig
    run_dir: Path
    stage: Stage
    fingerprint: str
    records: dict[str, StageRecord]

    @property
    def dir(self) -> Path:
        return self.run_dir / self.stage.name

    def has_input(self, stage_name: str) -> bool:
        return stage_name in self.records

    def input_record(self, stage_name: str) -> StageRecord:
        if stage_name not in self.records:
            raise RuntimeError(
                f"stage '{self.stage.name}' needs the outputs of '{stage_name}', which has not completed; "
                f"run the pipeline without --until, or enable '{stage_name}'"
            )
        return self.records[stage_name]

    def input_path(self, stage_name: str, output_name: str) -> Path:
        return self.input_record(stage_name).output_path(self.run_dir / stage_name, output_name)

    def input_metrics(self, stage_name: str) -> dict[str, Any]:
        return self.input_record(stage_name).metrics

    def model_file(self, key: str) -> ModelFile:
        """Model file ``key`` as the input stage that made it recorded it ("ok", "export failed", or
        "skipped" for what that stage's settings left out). When no completed input recorded it, the
        stage that makes it is switched off: a "skipped" record saying so (an error for the files
        every run makes, ``torch`` and ``fp32``)."""
        for name in self.stage.inputs:
            record = self.records.get(name)
            for entry in record.model_files if record is not None else ():
                if entry.key == key:
                    return entry
        if key not in WHEN_STAGE_OFF:
            raise RuntimeError(f"stage '{self.stage.name}' needs the {key} model file, which none of its inputs "
                               f"({', '.join(self.stage.inputs)}) recorded; run the pipeline without --until")
        return ModelFile.skipped(key, WHEN_STAGE_OFF[key])
