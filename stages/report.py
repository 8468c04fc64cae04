"""Stage 8: report.md, the summary people read (models, backends, per-class IoU, timings)."""

from __future__ import annotations

from typing import Any

from pipeline.artifacts import atomic_write_text
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.summary import backends_table, gap_closure, markdown_table, models_table

UPSTREAM = ("train_teacher", "train_student_baseline", "distill_student", "strip", "export_onnx", "validate",
            "benchmark")


def collected_metrics(ctx: StageContext) -> dict[str, Any]:
    from pipeline.artifacts import deep_merge

    merged: dict[str, Any] = {}
    for name in UPSTREAM:
        if ctx.has_input(name):
            merged = deep_merge(merged, ctx.input_metrics(name))
    return merged


def per_class_table(metrics: dict[str, Any]) -> str:
    columns = [(key, metrics[key]) for key in ("teacher", "student_baseline", "student") if key in metrics]
    columns += [(f"{name}", backend) for name, backend in metrics.get("backends", {}).items() if name != "pytorch"]
    names = list(columns[0][1].get("per_class_iou", {})) if columns else []
    rows = [[cls, *(col.get("per_class_iou", {}).get(cls) for _, col in columns)] for cls in names]
    return markdown_table(["class", *(label for label, _ in columns)], rows)


def run(ctx: StageContext) -> StageResult:
    metrics = collected_metrics(ctx)
    closure = gap_closure(metrics)
    lines = [
        f"# Run `{ctx.config.run.name}`",
        "",
        "## Models (val split)",
        models_table(metrics),
        "",
        f"Gap closed by distillation: {closure:.1f}% of (teacher - baseline)." if closure is not None else "",
        "",
        "## Exported student by backend",
        backends_table(metrics),
        "",
        *(["## Per-class IoU (%)", per_class_table(metrics), ""] if "miou" in metrics.get("student", {}) else []),
        "## Strip proof",
        markdown_table(["check", "value"], [[k, v] for k, v in metrics.get("strip", {}).items()]),
        "",
    ]
    atomic_write_text(ctx.dir / "report.md", "\n".join(lines))
    summary = {"gap_closure_percent": None if closure is None else round(closure, 2)}
    return StageResult(outputs={"report": "report.md"}, metrics={"distillation": summary,
                                                                 "artifacts": {"report": "report/report.md"}})


STAGE = Stage(
    name="report",
    run=run,
    inputs=UPSTREAM,
    config_keys=("report",),
    code=("pipeline.summary",),
    description="write report.md",
)
