"""Runs the stage graph: decides what is up to date (fingerprints), runs the rest in order.

A stage's fingerprint hashes its config slice, its code (its module and every project module it
imports, transitively: pipeline/orchestration/code_deps.py) and the identity of its inputs (their
fingerprints and output digests). A stage whose completion record matches is skipped; before a
stage runs its old record is removed, and the new one is written last, so an interrupted stage
never looks done.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import distributed
from pipeline import metrics_contract as keys
from pipeline.artifacts import atomic_write_json, deep_merge, sha256_file, sha256_json
from pipeline.config import PipelineConfig, dump_config
from pipeline.errors import PipelineError, StageFailed
from pipeline.orchestration.code_deps import code_digest
from pipeline.orchestration.stage import RECORD_NAME, Stage, StageContext, StageRecord
from pipeline.status import Status

METRICS_NAME = "metrics.json"


@dataclass(frozen=True)
class StagePlan:
    stage: str
    action: str  # "skip" | "run" | "disabled" | "not reached"
    reason: str


def record_identity(record: StageRecord) -> str:
    """What downstream stages depend on: the fingerprint and the exact output bytes."""
    return sha256_json({"fingerprint": record.fingerprint, "outputs": record.outputs})


class Runner:
    def __init__(self, config: PipelineConfig, run_dir: Path, stages: Sequence[Stage]) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.stages = list(stages)
        self.by_name = {stage.name: stage for stage in self.stages}

    # ------------------------------------------------------------------ planning
    def check_stage_names(self, names: Sequence[str]) -> None:
        import difflib

        for name in names:
            if name != "all" and name not in self.by_name:
                close = difflib.get_close_matches(name, list(self.by_name), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise PipelineError(f"unknown stage '{name}'{hint} Stages: {', '.join(self.by_name)}")

    def fingerprint_parts(self, stage: Stage, records: dict[str, StageRecord]) -> dict[str, Any]:
        module = stage.run.__module__
        parts = {
            "config": {key: self.config.section(key) for key in stage.config_keys},
            "code": code_digest([module]),
            "inputs": {
                name: record_identity(records[name]) if name in records else Status.DISABLED
                for name in stage.inputs
            },
        }
        if stage.machine is not None:
            parts["machine"] = stage.machine(self.config)
        return parts

    def plan(self, force: Sequence[str] = (), until: str | None = None) -> list[StagePlan]:
        """What `run` would do, and why, without running anything."""
        self.check_stage_names([*force, *([until] if until else [])])
        plans: list[StagePlan] = []
        records: dict[str, StageRecord] = {}
        rerun: set[str] = set()
        reached_end = False
        for stage in self.stages:
            if reached_end:
                plans.append(StagePlan(stage.name, "not reached", f"after --until {until}"))
                continue
            reached_end = stage.name == until
            if not stage.enabled(self.config):
                plans.append(StagePlan(stage.name, "disabled", "switched off in the config"))
                continue
            waiting = [name for name in stage.inputs if name in rerun]
            record = StageRecord.load(self.run_dir / stage.name)
            if waiting:
                reason = f"input {', '.join(waiting)} re-runs"
            else:
                reason = self._stale_reason(stage, record, records, force)
            if reason is None and record is not None:
                records[stage.name] = record
                plans.append(StagePlan(stage.name, "skip", "up to date"))
            else:
                rerun.add(stage.name)
                plans.append(StagePlan(stage.name, "run", reason or "never run"))
        return plans

    def _stale_reason(
        self,
        stage: Stage,
        record: StageRecord | None,
        records: dict[str, StageRecord],
        force: Sequence[str],
    ) -> str | None:
        if stage.name in force or "all" in force:
            return "forced"
        missing = [name for name in stage.inputs if name not in records and self.by_name[name].enabled(self.config)]
        if missing:
            return f"input {', '.join(missing)} has not completed"
        if record is None:
            return "never run"
        parts = self.fingerprint_parts(stage, records)
        if parts["config"] != record.parts.get("config"):
            changed = [k for k in parts["config"] if parts["config"][k] != record.parts.get("config", {}).get(k)]
            return f"config changed ({', '.join(changed) or 'keys'})"
        if parts["code"] != record.parts.get("code"):
            return "code changed"
        if parts["inputs"] != record.parts.get("inputs"):
            changed = [k for k in parts["inputs"] if parts["inputs"][k] != record.parts.get("inputs", {}).get(k)]
            return f"input {', '.join(changed)} changed"
        for name, output in record.outputs.items():
            path = self.run_dir / stage.name / output["path"]
            if not path.is_file():
                return f"output {output['path']} is missing"
            if sha256_file(path) != output["sha256"]:
                return f"output {output['path']} was modified"
        return None

    # ------------------------------------------------------------------ running
    def run(self, force: Sequence[str] = (), until: str | None = None) -> dict[str, Any]:
        """Run every stale stage in order; returns the run's metrics (also in metrics.json).

        Under torchrun, rank 0 decides what runs and owns the run folder; the other ranks follow its
        decisions, join the training stages (``Stage.distributed``) and wait while rank 0 runs the rest.
        """
        self.check_stage_names([*force, *([until] if until else [])])
        main = distributed.is_main()
        if main:
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise PipelineError(f"run folder {self.run_dir} is a file; pass --out with a folder path")
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PipelineError(f"cannot create run folder {self.run_dir}: {exc.strerror}; pass --out with a "
                                    "folder you can write") from None
        with RunLock(self.run_dir) if main else contextlib.nullcontext():
            if main:
                dump_config(self.config, self.run_dir / "config.yaml")
            records: dict[str, StageRecord] = {}
            statuses: dict[str, Status] = {}
            metrics: dict[str, Any] = {}
            for stage in self.stages:
                if not stage.enabled(self.config):
                    statuses[stage.name] = Status.DISABLED
                    continue
                record, reason = None, None
                if main:
                    record = StageRecord.load(self.run_dir / stage.name)
                    # An input that re-ran but produced identical outputs leaves this stage up to date.
                    reason = self._stale_reason(stage, record, records, force)
                record, reason = distributed.broadcast_object((record, reason))
                if reason is None and record is not None:
                    records[stage.name] = record
                    statuses[stage.name] = Status.SKIPPED
                    _say(f"[{stage.name}] up to date, skipped")
                else:
                    _say(f"[{stage.name}] running ({reason})")
                    records[stage.name] = self._execute(stage, records)
                    statuses[stage.name] = Status.RAN
                if main:
                    metrics = self.write_metrics(records, statuses)
                if stage.name == until:
                    break
            return self.write_metrics(records, statuses) if main else metrics

    def _execute(self, stage: Stage, records: dict[str, StageRecord]) -> StageRecord:
        """Training stages run on every rank; any other stage on rank 0 alone. Either way every rank
        leaves with rank 0's completion record (the broadcast is where the other ranks wait)."""
        record = None
        if stage.distributed or distributed.is_main():
            record = self._run_stage(stage, records)
        return distributed.broadcast_object(record)

    def _run_stage(self, stage: Stage, records: dict[str, StageRecord]) -> StageRecord | None:
        """Run ``stage``; rank 0 checks its outputs and writes its record (other ranks return None)."""
        main = distributed.is_main()
        stage_dir = self.run_dir / stage.name
        if main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            (stage_dir / RECORD_NAME).unlink(missing_ok=True)  # from here on the stage is "not done"
        parts = self.fingerprint_parts(stage, records)
        fingerprint = sha256_json(parts)
        context = StageContext(self.config, self.run_dir, stage, fingerprint, dict(records))
        from pipeline.environment import seed_everything

        # Every stage starts from the same random state, so model initialisation (built before
        # any training loop seeds) and anything else random is reproducible run to run.
        seed_everything(self.config.run.seed)
        started = time.perf_counter()
        try:
            result = stage.run(context)
        except PipelineError:
            raise
        except Exception as exc:  # the stage's own message, and which stage; no completion record is written
            raise StageFailed(stage.name, exc) from exc
        seconds = time.perf_counter() - started
        if not main:
            return None
        outputs = {}
        for name, relative in result.outputs.items():
            path = stage_dir / relative
            if not path.is_file():
                raise PipelineError(f"stage '{stage.name}' declared output '{relative}' but did not write it")
            outputs[name] = {"path": str(relative), "sha256": sha256_file(path)}
        declared = {f"{stage.name}/{output['path']}" for output in outputs.values()}
        for entry in result.model_files:
            # Downstream stages open these files: they must be outputs, so their digests are checked.
            if entry.path is not None and entry.path not in declared:
                raise PipelineError(f"stage '{stage.name}' recorded model file '{entry.path}', which is not one of "
                                    "its declared outputs")
        record = StageRecord(
            stage=stage.name,
            fingerprint=fingerprint,
            parts=parts,
            outputs=outputs,
            metrics=result.metrics,
            seconds=round(seconds, 3),
            finished_at=_now(),
            model_files=tuple(result.model_files),
        )
        atomic_write_json(stage_dir / RECORD_NAME, record.to_dict())
        print(f"[{stage.name}] done in {seconds:.1f} s")
        return record

    def write_metrics(self, records: dict[str, StageRecord], statuses: dict[str, Status]) -> dict[str, Any]:
        from pipeline.environment import run_info

        metrics: dict[str, Any] = {keys.RUN: run_info(self.config), keys.STAGES: {}}
        for stage in self.stages:
            record = records.get(stage.name)
            if record is not None:
                metrics = deep_merge(metrics, record.metrics)
                metrics["stages"][stage.name] = {
                    "seconds": record.seconds,
                    "status": statuses.get(stage.name, Status.SKIPPED),
                    "fingerprint": record.fingerprint,
                }
            elif stage.name in statuses:
                metrics["stages"][stage.name] = {"seconds": 0.0, "status": statuses[stage.name]}
        atomic_write_json(self.run_dir / METRICS_NAME, metrics)
        return metrics


class RunLock:
    """One pipeline process per run folder; a lock left by a dead process is taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"

    def __enter__(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = _read_pid(self.path)
            if pid is not None and _pid_alive(pid):
                raise PipelineError(
                    f"{self.path.parent} is in use by another pipeline process (pid {pid}); "
                    "wait for it, or pass --out to use another folder"
                ) from None
            self.path.unlink(missing_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _say(text: str) -> None:
    if distributed.is_main():
        print(text)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
