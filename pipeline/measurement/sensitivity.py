"""Per-layer INT8 sensitivity of a finished run (``python -m pipeline sensitivity RUN_DIR``): which
quantized nodes cost the task metric (mIoU, or top-1 for classification), and which to keep in float.

Two modes, each one INT8 model per node, built with the run's recipe and measured like the
validate stage measures (the task metric on the val split, ONNX Runtime on the CPU):

- ``keep-one-float`` (default): everything the recipe quantizes except that node; its row says how
  much of the metric keeping it in float recovers against the full INT8 model.
- ``quantize-one``: only that node quantized; its row says how much quantizing it alone loses
  against FP32.

Calibration runs once (:func:`~pipeline.deployment.quantize.calibrate_int8`): activation ranges do
not depend on which nodes stay float, so each variant is only a re-quantization. The baseline rows
(FP32, full INT8) are measured the same way, and in ``keep-one-float`` mode the suggested
``quantize.float_nodes`` (:func:`suggest_float_nodes`) is built and measured as one more row, since
single-node recoveries need not add up.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline import metrics_contract as keys
from pipeline.artifacts import atomic_write_json, atomic_write_text
from pipeline.config import PipelineConfig, load_config
from pipeline.deployment.quantize import (
    Int8Recipe,
    calibrate_int8,
    quantize_calibrated,
    quantized_op_types,
    read_calibration_images,
)
from pipeline.errors import PipelineError
from pipeline.measurement.latency import measure_latency
from pipeline.measurement.validation import validation_batches
from pipeline.orchestration.stage import StageRecord
from pipeline.reporting.tables import markdown_table

MODES = ("keep-one-float", "quantize-one")
OUT_DIR = "sensitivity"  # inside the run folder, unless --out says otherwise
COLUMNS = ("name", "kind", "op_type", "module", "metric", "delta_vs_int8", "delta_vs_fp32", "p50_ms", "quantize_linear")
# Val batches are kept in memory for the next variant up to this size; a larger split is re-read.
_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class SensitivityOptions:
    mode: str = "keep-one-float"
    max_nodes: int | None = None  # measure only the first N quantized nodes, in graph order
    val_images: int | None = None  # None: validate.max_images, as the validate stage scores
    latency: bool = True
    threads: int | None = None  # ONNX Runtime intra-op threads; None: the run's benchmark.threads
    warmup: int = 3
    iters: int = 20  # timed calls per model: enough for a p50, not a benchmark


@dataclass(frozen=True)
class Suggestion:
    """The ``quantize.float_nodes`` setting that should bring INT8 within tolerance of FP32.

    Rule: nodes by recovered metric, largest first, are added while the INT8 metric plus their summed
    single-node recoveries stays short of ``target`` (FP32 minus ``validate.int8_miou_tolerance``).
    Only nodes that recover something are taken; ``reached`` says whether the estimate got there.
    """

    float_nodes: tuple[str, ...]  # the whole setting: the run's own float_nodes, then the added ones
    added: tuple[str, ...]
    target: float
    estimate: float  # INT8 metric + the added nodes' single-node recoveries
    reached: bool
    measured: float | None = None  # the metric of the INT8 model built with this setting

    def override(self) -> str:
        """The command-line override, e.g. ``quantize.float_nodes=[a,b]``."""
        return f"quantize.float_nodes=[{','.join(self.float_nodes)}]"

    def yaml(self) -> str:
        return "quantize:\n  float_nodes: [" + ", ".join(self.float_nodes) + "]\n"


@dataclass
class SensitivityReport:
    rows: list[dict[str, Any]]
    context: dict[str, Any]
    suggestion: Suggestion | None
    paths: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class RunFolder:
    """What sensitivity reads from a finished run: its config and its FP32 ONNX model."""

    path: Path
    config: PipelineConfig
    fp32: Path


def open_run(run_dir: Path) -> RunFolder:
    """Check ``run_dir`` is a run with an FP32 ONNX export; a :class:`PipelineError` says what to do if not."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise PipelineError(f"run folder {run_dir} does not exist; pass a folder written by "
                            "`python -m pipeline run CONFIG` (default exported/<run.name>)")
    if not (run_dir / "config.yaml").is_file():
        raise PipelineError(f"{run_dir} is not a run folder (no config.yaml); pass the folder that "
                            "`python -m pipeline run CONFIG --out DIR` wrote")
    config = load_config(run_dir / "config.yaml")
    record = StageRecord.load(run_dir / "export_onnx")
    fp32 = record.output_path(run_dir / "export_onnx", "onnx") if record and "onnx" in record.outputs else None
    if fp32 is None or not fp32.is_file():
        raise PipelineError(f"{run_dir} has no FP32 ONNX model (export_onnx/student.onnx, stage not completed); run "
                            f"`python -m pipeline run {run_dir / 'config.yaml'} --out {run_dir}` first")
    return RunFolder(run_dir, config, fp32)


def quantized_nodes(model: onnx.ModelProto, op_types: Sequence[str], excluded: Sequence[str]) -> list[tuple[str, str]]:
    """(name, op type) of each node a Q/DQ model runs on dequantized inputs that the recipe quantizes
    (its op type is in ``op_types``, it is not ``excluded``), in graph order. A float node may read a
    dequantized tensor too (a quantized producer's Q/DQ serves every consumer): hence both filters.
    ReLU/Clip folded into a Conv's quantization are gone from the model, so not among them."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    allowed, skip = set(op_types), set(excluded)
    return [(node.name, node.op_type) for node in model.graph.node
            if node.op_type in allowed and node.name not in skip and dequantized.intersection(node.input)]


def source_modules(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> the PyTorch module it was exported from (``backbone.features.7.conv.1.0``), read
    from the ``pkg.torch.onnx.name_scopes`` metadata torch.onnx's exporter gives every node: the
    innermost module scope, before the node's own name. Nodes without it (other exporters) are left
    out: ONNX node names such as ``node_conv2d_19`` alone do not say which layer to look at."""
    modules = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if scopes is None:
            continue
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            continue
        inner = names[-2] if isinstance(names, list) and len(names) >= 2 else ""
        if inner:
            modules[node.name] = inner
    return modules


def suggest_float_nodes(rows: Sequence[dict[str, Any]], *, fp32: float, int8: float, tolerance: float,
                        existing: Sequence[str] = ()) -> Suggestion:
    """Greedy ``quantize.float_nodes`` from ``keep-one-float`` node rows (``name``, ``delta_vs_int8``)."""
    target = fp32 - tolerance
    added: list[str] = []
    estimate = int8
    for row in sorted(rows, key=lambda r: -r["delta_vs_int8"]):
        if estimate >= target or row["delta_vs_int8"] <= 0:
            break
        added.append(row["name"])
        estimate += row["delta_vs_int8"]
    return Suggestion(tuple(existing) + tuple(n for n in added if n not in existing), tuple(added),
                      round(target, 4), round(estimate, 4), estimate >= target)


def run_sensitivity(run_dir: Path, options: SensitivityOptions = SensitivityOptions(), out: Path | None = None,
                    progress: Callable[[str], None] | None = print) -> SensitivityReport:
    """Measure every quantized node of the run in ``run_dir``; write sensitivity.{json,csv,md} into
    ``out`` (default ``RUN_DIR/sensitivity``). Nothing else in the run folder is written."""
    if options.mode not in MODES:
        raise PipelineError(f"unknown sensitivity mode {options.mode!r}; use one of {', '.join(MODES)}")
    say = progress or (lambda _: None)
    started = time.perf_counter()
    run = open_run(run_dir)
    config = run.config
    from pipeline.tasks import get_task  # torch: only once the arguments are known to be good

    task = get_task(config.task)
    recipe = Int8Recipe.from_config(config.quantize)
    scorer = _Scorer(config, options)
    with tempfile.TemporaryDirectory(prefix="sensitivity-") as scratch:
        work = Path(scratch)
        images = read_calibration_images(config.data, config.quantize.calibration_images)
        say(f"[sensitivity] calibrating once on {len(images)} images ({recipe.calibrate_method}, "
            f"{recipe.activation_type} activations, {'7' if recipe.reduce_range else '8'}-bit weights)")
        calibrated = calibrate_int8(run.fp32, images, recipe, work)
        variant = work / "variant.onnx"
        modules = source_modules(onnx.load(str(run.fp32)))

        def measure(name: str, kind: str, op_type: str | None, **quantize: Sequence[str]) -> dict[str, Any]:
            path = run.fp32
            if kind != "fp32":
                quantize_calibrated(calibrated, variant, **quantize)
                path = variant
            metric, p50 = scorer(path)
            q_count = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
            return {"name": name, "kind": kind, "op_type": op_type, "module": modules.get(name), "metric": metric,
                    "p50_ms": p50, "quantize_linear": q_count}

        fp32_row = measure("fp32", "fp32", None)
        int8_row = measure("int8", "int8", None)
        recipe_float = calibrated.excluded_nodes()
        # The variant file holds the full INT8 model now.
        nodes = quantized_nodes(onnx.load(str(variant)), quantized_op_types(recipe), recipe_float)
        if not nodes:
            raise PipelineError(f"the run's recipe quantizes no node of {run.fp32}; check quantize.float_op_types "
                                "and quantize.float_nodes in its config")
        chosen = nodes[: options.max_nodes] if options.max_nodes else nodes
        validated = validate_stage_figures(run.path, task.metric)
        say(f"[sensitivity] {task.metric_label}: FP32 {fp32_row['metric']:.4f}, INT8 {int8_row['metric']:.4f}"
            + (" (validate stage: " + ", ".join(f"{k} {v}" for k, v in validated.items()) + ")" if validated else "")
            + f"; {options.mode}: {len(chosen)} of {len(nodes)} quantized nodes")
        rows = []
        for index, (name, op_type) in enumerate(chosen, 1):
            change = {"extra_float_nodes": [name]} if options.mode == "keep-one-float" else {"only_nodes": [name]}
            row = _with_deltas(measure(name, "node", op_type, **change), fp32_row, int8_row)
            rows.append(row)
            say(f"[sensitivity] {index}/{len(chosen)} {name} ({op_type}"
                + (f", {row['module']}" if row["module"] else "") + f"): {task.metric_label} {row['metric']:.4f} "
                f"({row['delta_vs_int8']:+.4f} vs INT8, {row['delta_vs_fp32']:+.4f} vs FP32)"
                + (f", p50 {row['p50_ms']:.3f} ms" if row["p50_ms"] is not None else ""))

        suggestion = None
        baselines = [_with_deltas(fp32_row, fp32_row, int8_row), _with_deltas(int8_row, fp32_row, int8_row)]
        if options.mode == "keep-one-float":
            suggestion = suggest_float_nodes(rows, fp32=fp32_row["metric"], int8=int8_row["metric"],
                                             tolerance=config.validate_.int8_miou_tolerance,
                                             existing=config.quantize.float_nodes)
            if suggestion.added:
                checked = measure("int8+suggested", "int8", None, extra_float_nodes=suggestion.added)
                baselines.append(_with_deltas(checked, fp32_row, int8_row))
                suggestion = Suggestion(**{**asdict(suggestion), "measured": checked["metric"]})

    if options.mode == "keep-one-float":
        rows.sort(key=lambda r: -r["delta_vs_int8"])  # stable: ties stay in graph order
    else:
        rows.sort(key=lambda r: r["delta_vs_fp32"])
    context = _context(run, options, task, recipe, recipe_float, len(images), scorer, len(nodes), len(chosen),
                       suggestion, time.perf_counter() - started)
    report = SensitivityReport(baselines + rows, context, suggestion)
    report.paths = write_report(Path(out) if out is not None else run.path / OUT_DIR, report.rows, context)
    return report


def validate_stage_figures(run_dir: Path, metric: str) -> dict[str, float] | None:
    """The run's own ONNX Runtime FP32 and INT8 figures from metrics.json: the baseline rows should
    match them when scored on the same val images (else the CPU or the recipe changed since)."""
    try:
        backends = json.loads((Path(run_dir) / "metrics.json").read_text()).get(keys.BACKENDS) or {}
    except (OSError, ValueError, AttributeError):
        return None
    found = {key: backends[key].get(metric) for key in ("onnxruntime-fp32", "onnxruntime-int8")
             if isinstance(backends.get(key), dict) and backends[key].get(metric) is not None}
    return found or None


def write_report(directory: Path, rows: Sequence[dict[str, Any]], context: dict[str, Any]) -> list[Path]:
    """``sensitivity.json`` (rows + context), ``.csv`` (rows) and ``.md`` (table, suggestion, facts)."""
    paths = [Path(directory) / f"sensitivity.{ext}" for ext in ("json", "csv", "md")]
    atomic_write_json(paths[0], {"rows": list(rows), **context})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row.get(k) is None else row[k] for k in COLUMNS} for row in rows)
    atomic_write_text(paths[1], buffer.getvalue())
    atomic_write_text(paths[2], to_markdown(rows, context))
    return paths


def to_markdown(rows: Sequence[dict[str, Any]], context: dict[str, Any]) -> str:
    label = context["metric_label"]
    # Single-node effects are often hundredths of a point: more decimals than the report's tables.
    table = markdown_table(["node", "op", "module", f"{label} %", "vs INT8", "vs FP32", "p50 ms"],
                           [[row["name"], row["op_type"] or row["kind"], row["module"] or "-",
                             f"{row['metric']:.3f}", f"{row['delta_vs_int8']:+.3f}", f"{row['delta_vs_fp32']:+.3f}",
                             "-" if row["p50_ms"] is None else f"{row['p50_ms']:.3f}"] for row in rows])
    parts = [table, "", suggestion_text(context.get("suggestion"), label)] if context.get("suggestion") else [table]
    facts = {k: v for k, v in context.items() if k != "suggestion"}
    parts += ["", *(f"- {k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in facts.items())]
    return "\n".join(parts) + "\n"


def suggestion_text(suggestion: dict[str, Any] | None, label: str) -> str:
    """What to paste, and how sure it is, for the console and the Markdown file."""
    if suggestion is None:
        return ""
    if not suggestion["added"]:
        return (f"INT8 is already within tolerance of FP32 ({label} target {suggestion['target']}): "
                "no node needs to stay float.")
    nodes = suggestion["float_nodes"]
    lines = [f"suggested: keep {len(suggestion['added'])} node(s) in float, {label} estimate "
             f"{suggestion['estimate']} (target {suggestion['target']}"
             + ("" if suggestion["reached"] else ", not reached even with every recovering node") + "), measured "
             f"{suggestion['measured']}:",
             f"  quantize.float_nodes=[{','.join(nodes)}]",
             "  # or in the config:",
             "  quantize:",
             "    float_nodes: [" + ", ".join(nodes) + "]"]
    return "\n".join(lines)


class _Scorer:
    """A model's task metric on the val split and its ONNX Runtime p50 latency."""

    def __init__(self, config: PipelineConfig, options: SensitivityOptions) -> None:
        from pipeline.data import dataset_info
        from pipeline.tasks import get_task

        self.config, self.options = config, options
        self.task, self.info = get_task(config.task), dataset_info(config.data)
        self.threads = options.threads if options.threads is not None else config.benchmark.threads
        side = config.data.image_size
        self.latency_input = np.random.default_rng(0).standard_normal(
            (config.benchmark.batch_size, 3, side, side)).astype(np.float32)
        self.val = _ValSplit(config, options.val_images)

    def __call__(self, path: Path) -> tuple[float, float | None]:
        from pipeline.runtime import OnnxRuntimePredictor

        predictor = OnnxRuntimePredictor(path, threads=self.threads)
        summary = self.task.evaluate_predictions(predictor.predict, self.val, self.info).summary()
        p50 = None
        if self.options.latency:
            x = self.latency_input
            stats = measure_latency(lambda: predictor.predict(x), batch_size=len(x), warmup=self.options.warmup,
                                    min_iters=self.options.iters, min_seconds=0.0)
            p50 = round(stats.p50, 3)
        return float(summary[self.task.metric]), p50


class _ValSplit:
    """The val batches, re-iterable; kept in memory after the first pass when they fit, since every
    variant reads the same ones."""

    def __init__(self, config: PipelineConfig, max_images: int | None) -> None:
        self.config, self.max_images = config, max_images
        self.cached: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.images = 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.cached is not None:
            yield from self.cached
            return
        kept: list[tuple[np.ndarray, np.ndarray]] | None = []
        size = count = 0
        for images, targets in validation_batches(self.config, self.max_images):
            count += len(images)
            size += images.nbytes + targets.nbytes
            if kept is not None and size <= _CACHE_BYTES:
                kept.append((images, targets))
            else:
                kept = None  # too big to keep: later passes read the split again
            yield images, targets
        self.images, self.cached = count, kept


def _with_deltas(row: dict[str, Any], fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    metric = row["metric"]
    return {**row, "delta_vs_int8": round(metric - int8["metric"], 4),
            "delta_vs_fp32": round(metric - fp32["metric"], 4)}


def _context(run: RunFolder, options: SensitivityOptions, task: Any, recipe: Int8Recipe, recipe_float: list[str],
             calibration_images: int, scorer: _Scorer, total: int, measured: int,
             suggestion: Suggestion | None, seconds: float) -> dict[str, Any]:
    return {
        "run_dir": str(run.path),
        "model": str(run.fp32),
        "mode": options.mode,
        "metric": task.metric,
        "metric_label": task.metric_label,
        "sorted_by": ("delta_vs_int8, largest recovery first" if options.mode == "keep-one-float"
                      else "delta_vs_fp32, largest loss first"),
        "nodes_quantized": total,
        "nodes_measured": measured,
        "val_images": scorer.val.images,
        "validate_stage": validate_stage_figures(run.path, task.metric),
        "calibration_images": calibration_images,
        "int8_tolerance": run.config.validate_.int8_miou_tolerance,
        "recipe": {"activation_type": recipe.activation_type, "calibrate_method": recipe.calibrate_method,
                   "per_channel": recipe.per_channel, "reduce_range": recipe.reduce_range,
                   "float_op_types": list(recipe.float_op_types),
                   "float_nodes": recipe_float},
        "latency": ({"threads": scorer.threads if scorer.threads is not None else "default",
                     "input_shape": "x".join(map(str, scorer.latency_input.shape)),
                     "warmup": options.warmup, "iters": options.iters} if options.latency else "off"),
        "seconds": round(seconds, 1),
        "suggestion": ({**asdict(suggestion), "float_nodes": list(suggestion.float_nodes),
                        "added": list(suggestion.added)} if suggestion is not None else None),
    }
