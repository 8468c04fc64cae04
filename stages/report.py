"""Stage 8: the report people read: report.md (with PNG figures beside it) and a self-contained
report.html (figures embedded): summary, the accuracy-latency Pareto frontier across backends
(table, chart, pareto.json / pareto.md), stage timings, training curves, per-class IoU and pictures
from the val split (image | truth | teacher | student | ONNX)."""

from __future__ import annotations

import html
from typing import Any

from pipeline import metrics_contract as keys
from pipeline.artifacts import atomic_write_bytes, atomic_write_text, deep_merge
from pipeline.builders import build_student, build_teacher, load_weights
from pipeline.data import dataset_info
from pipeline.measurement.pareto import backend_points, pareto_rows, pareto_table, write_pareto
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.orchestration.summary import backends_table, gap_closure, models_table, status_notes
from pipeline.reporting import charts
from pipeline.reporting import html as html_page
from pipeline.reporting.samples import displayable, predicted_masks, val_samples
from pipeline.reporting.tables import Table, markdown_cell
from pipeline.runtime import OnnxRuntimePredictor, TorchPredictor
from pipeline.status import Status
from pipeline.tasks import get_task

UPSTREAM = ("train_teacher", "train_student_baseline", "distill_student", "strip", "export_onnx", "quantize",
            "build_engine", "validate", "benchmark", "deploy")
TRAINING = (("train_teacher", "teacher"), ("train_student_baseline", "baseline"), ("distill_student", "student"))
MODEL_COLUMNS = ((keys.TEACHER, "teacher"), (keys.STUDENT_BASELINE, "baseline"), (keys.STUDENT, "student"))


def collected_metrics(ctx: StageContext) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in UPSTREAM:
        if ctx.has_input(name):
            merged = deep_merge(merged, ctx.input_metrics(name))
    return merged


def gated_backends(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every backend x precision that ran (not skipped), by name; the legacy aliases
    (``pytorch``, ``onnxruntime``) repeat ``pytorch-fp32`` / ``onnxruntime-fp32`` and are left out."""
    return {name: entry for name, entry in metrics.get("backends", {}).items()
            if "-" in name and isinstance(entry, dict) and entry.get("status") not in (Status.SKIPPED, None)}


def per_class_columns(metrics: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    columns = {label: metrics[key]["per_class_iou"] for key, label in MODEL_COLUMNS
               if "per_class_iou" in metrics.get(key, {})}
    # PyTorch is the stripped student itself; every exported backend gets its own bars.
    columns.update({name: entry["per_class_iou"] for name, entry in gated_backends(metrics).items()
                    if name != "pytorch-fp32" and "per_class_iou" in entry})
    return columns


def per_class_table(metrics: dict[str, Any]) -> Table:
    columns = per_class_columns(metrics)
    names = list(next(iter(columns.values()))) if columns else []
    rows = [[cls, *(column.get(cls) for column in columns.values())] for cls in names]
    return Table(["class", *columns], rows)


def stage_timings(ctx: StageContext) -> Table:
    rows = [[name, ctx.records[name].seconds, ctx.records[name].finished_at] for name in UPSTREAM if ctx.has_input(name)]
    return Table(["stage", "seconds (last run)", "finished at"], rows)


def histories(ctx: StageContext) -> dict[str, list[dict[str, Any]]]:
    import json

    found = {}
    for stage, label in TRAINING:
        if ctx.has_input(stage):
            lines = ctx.input_path(stage, "history").read_text().splitlines()
            found[label] = [json.loads(line) for line in lines if line.strip()]
    return found


def picture_grid(ctx: StageContext) -> bytes | None:
    config = ctx.config
    if config.report.samples == 0 or config.task != "segmentation":  # the grid draws masks
        return None
    info = dataset_info(config.data)
    images, truth = val_samples(config.data, config.report.samples)
    predictors = {
        "teacher": TorchPredictor(load_weights(build_teacher(config), ctx.input_path("train_teacher", "weights"))),
        "student": TorchPredictor(load_weights(build_student(config), ctx.input_path("strip", "student"))),
        "exported (ONNX Runtime)": OnnxRuntimePredictor(ctx.input_path("export_onnx", "onnx")),
    }
    panels = {"ground truth": list(truth), **{k: list(v) for k, v in predicted_masks(predictors, images).items()}}
    return charts.sample_grid(displayable(images, config.data), panels, info.class_names, info.ignore_index)


def run(ctx: StageContext) -> StageResult:
    metrics = collected_metrics(ctx)
    closure = gap_closure(metrics)
    figures: dict[str, bytes] = {}
    curves = histories(ctx)
    if curves:
        figures["training_curves"] = charts.training_curves(curves)
    columns = per_class_columns(metrics)
    if columns:
        names = dataset_info(ctx.config.data).class_names
        figures["per_class_iou"] = charts.per_class_bars(names, columns)
    task = get_task(ctx.config.task)
    points = backend_points(metrics.get("backends", {}), task.metric)
    pareto = pareto_rows(points)
    if points:
        front = {row["label"] for row in pareto if row["on_front"]}
        figures["latency_vs_miou"] = charts.latency_vs_miou({p.label: (p.latency_ms, p.score) for p in points}, front,
                                                            f"val {task.metric_label} %")
        write_pareto(ctx.dir, pareto, {"run": ctx.config.run.name, "metric": task.metric, "latency": "p50 ms, "
                                       "the benchmark stage's batch and threads"}, f"{task.metric_label} %")
    grid = picture_grid(ctx)
    if grid is not None:
        figures["samples"] = grid
    for name, png in figures.items():
        atomic_write_bytes(ctx.dir / f"{name}.png", png)

    closure_text = (f"Distillation closed {closure:.1f}% of the teacher-baseline mIoU gap."
                    if closure is not None else "Gap closure undefined (teacher and baseline tie).")
    tables = [
        ("Models (val split)", models_table(metrics), [closure_text]),
        ("Exported student by backend", backends_table(metrics), status_notes(metrics)),
        *([("Accuracy-latency Pareto frontier", pareto_table(pareto, f"{task.metric_label} %"),
            ["On the frontier: no other deployment is both at least as fast and at least as accurate."])]
          if pareto else []),
        ("Stage timings", stage_timings(ctx), []),
        *([("Per-class IoU (%)", per_class_table(metrics), [])] if ctx.config.task == "segmentation" else []),
        ("Strip proof", Table(["check", "value"], [[k, v] for k, v in metrics.get("strip", {}).items()]), []),
    ]
    figure_titles = {"training_curves": "Training curves", "per_class_iou": "Per-class IoU",
                     "latency_vs_miou": "Latency vs accuracy", "samples": "Val pictures"}

    lines = [f"# Run `{ctx.config.run.name}`", ""]
    for title, table, notes in tables:
        lines += [f"## {title}", table.markdown(), "", *(f"- {markdown_cell(note)}" for note in notes), ""]
    for name in figures:
        lines += [f"## {figure_titles[name]}", f"![{figure_titles[name]}]({name}.png)", ""]
    atomic_write_text(ctx.dir / "report.md", "\n".join(lines))

    sections = [(title, table.html() + "".join(f'<p class="note">{html.escape(note)}</p>' for note in notes))
                for title, table, notes in tables]
    sections += [(figure_titles[name], html_page.image_tag(png, figure_titles[name])) for name, png in figures.items()]
    atomic_write_text(ctx.dir / "report.html", html_page.page(f"Run {ctx.config.run.name}", sections))

    summary = {"gap_closure_percent": None if closure is None else round(closure, 2)}
    outputs = {"report": "report.md", "html": "report.html", **{name: f"{name}.png" for name in figures},
               **({"pareto": "pareto.json", "pareto_md": "pareto.md"} if pareto else {})}
    return StageResult(outputs=outputs, metrics={keys.DISTILLATION: summary,
                                                 keys.ARTIFACTS: {"report": "report/report.md",
                                                               "report_html": "report/report.html"}})


STAGE = Stage(
    name="report",
    run=run,
    inputs=UPSTREAM,
    config_keys=("report", "data", "teacher.model", "student.model", "distill.methods"),
    description="write report.md and report.html (tables, curves, per-class IoU, pictures)",
)
