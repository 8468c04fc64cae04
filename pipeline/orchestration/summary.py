"""Human-readable tables from a run's metrics (terminal summary and report.md share them)."""

from __future__ import annotations

from typing import Any

from pipeline import metrics_contract as keys
from pipeline.reporting.tables import Table
from pipeline.status import Status

# metrics-contract v1 keys that mirror a <backend>-<precision> entry (see pipeline/runtime/backends.py).
LEGACY_BACKEND_ALIASES = {"pytorch": "pytorch-fp32", "onnxruntime": "onnxruntime-fp32"}
MODEL_ROWS = (("teacher", "teacher"), ("student_baseline", "student (baseline, CE only)"),
              ("student", "student (distilled)"))
# Per task: (headline metric, its column, second metric, its column). Tables show the first task
# whose headline metric the run's models report, so they need only metrics.json, not the config.
TASK_COLUMNS = (("miou", "val mIoU %", "pixel_accuracy", "pixel acc %"),
                ("top1", "val top-1 %", "top5", "top-5 %"))


def task_columns(metrics: dict[str, Any]) -> tuple[str, str, str, str]:
    """The metric keys and column names of the task this run's metrics come from."""
    models = [metrics.get(key) or {} for key, _ in MODEL_ROWS] + list(metrics.get("backends", {}).values())
    for columns in TASK_COLUMNS:
        if any(columns[0] in model for model in models):
            return columns
    return TASK_COLUMNS[0]


def models_table(metrics: dict[str, Any]) -> Table:
    metric, metric_column, second, second_column = task_columns(metrics)
    rows = []
    for key, label in MODEL_ROWS:
        model = metrics.get(key)
        if model and metric in model:
            rows.append([label, model.get("params"), model[metric], model.get(second), model.get("last_quarter_change"),
                         model.get("seconds_per_step")])
    # How far the val figure moved over the last quarter of training: under 1 point, the model levelled off.
    return Table(["model", "params", metric_column, second_column, "last-quarter change", "s/step"], rows)


def canonical_backends(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's backend entries, without the legacy aliases that repeat a <backend>-<precision> entry."""
    backends = metrics.get("backends", {})
    return {name: entry for name, entry in backends.items()
            if not (name in LEGACY_BACKEND_ALIASES and LEGACY_BACKEND_ALIASES[name] in backends)}


def backends_table(metrics: dict[str, Any]) -> Table:
    metric, metric_column, _, _ = task_columns(metrics)
    rows = []
    for name, backend in canonical_backends(metrics).items():
        latency = backend.get("latency_ms", {})
        rows.append([name, backend.get("status"), backend.get("precision"), backend.get(metric),
                     backend.get(f"{metric}_delta"), backend.get("max_abs_diff"), latency.get("p50"),
                     latency.get("p99"), latency.get("throughput")])
    return Table(["backend", "status", "precision", metric_column.removeprefix("val "), "delta", "max abs diff",
                  "p50 ms", "p99 ms", "img/s"], rows)


_STATUS_HINTS = {Status.EXPORT_FAILED: "the model file could not be produced; the stage log above it says where, and "
                                  "`--force <stage> --debug` shows the traceback"}


def status_notes(metrics: dict[str, Any]) -> list[str]:
    """One line per backend that did not pass: its status, why, and what to do about it."""
    notes = []
    for name, backend in canonical_backends(metrics).items():
        if not isinstance(backend, dict) or backend.get("status") in (Status.PASSED, Status.OK, None):
            continue
        hint = backend.get("hint") or backend.get("install_hint") or _STATUS_HINTS.get(backend["status"])
        notes.append(f"{name}: {backend['status']}: {backend.get('reason') or 'no reason recorded'}"
                     + (f"; to do: {hint}" if hint else ""))
    return notes


def stages_table(metrics: dict[str, Any]) -> Table:
    rows = [[name, info.get("status"), info.get("seconds")] for name, info in metrics.get("stages", {}).items()]
    return Table(["stage", "status", "seconds"], rows)


def gap_closure(metrics: dict[str, Any]) -> float | None:
    """(student - baseline) / (teacher - baseline) of the task's metric, in percent; None when undefined."""
    metric = task_columns(metrics)[0]
    try:
        teacher, baseline, student = (metrics[k][metric] for k in keys.MODEL_ROLES)
    except KeyError:
        return None
    gap = teacher - baseline
    return None if abs(gap) < 1e-9 else 100.0 * (student - baseline) / gap
