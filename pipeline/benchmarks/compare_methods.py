"""Side-by-side comparison of distillation methods from a finished sweep, deployment figures included.

    python -m pipeline sweep configs/sweeps/compare_methods.yaml                        # trains (until distill_student)
    python -m pipeline.benchmarks.compare_methods exported/sweeps/compare_methods  # strips, exports, measures

The sweep leaves ordinary run folders ``<sweep>/<variant>/seed<k>/``. This command reads every
one's metrics (student mIoU, seconds per training step) and, for the first seed of each variant,
continues that run with the pipeline's own stages through strip, export, quantize, validation
and benchmark (the trained stages are skipped as up to date): the exported student's parameter
count and ONNX Runtime latency, which only LetKD changes, and every backend x precision's mIoU and
latency come from there, so the table says whether each method's gain survives INT8, and the
accuracy-latency Pareto frontier spans every method x backend x precision measured. ``key=value``
overrides (e.g. ``benchmark.threads=1``) apply to those continued runs only.

Writes ``compare_methods.json``, ``compare_methods.md``, ``pareto.json``, ``pareto.md`` and
``compare_methods_pareto.png`` into ``--out`` (default: the sweep folder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from pipeline.config import ConfigError, load_config
from pipeline.measurement.pareto import backend_points, pareto_rows, pareto_table, write_pareto
from pipeline.orchestration.runner import METRICS_NAME, PipelineError, Runner
from pipeline.reporting.tables import markdown_table
from pipeline.runtime.backends import REFERENCE_KEY as REFERENCE
from pipeline.status import Status

UNTIL = "benchmark"


def find_runs(sweep_dir: Path) -> dict[str, list[Path]]:
    """variant -> its seed run folders (sorted), for every run whose student finished training."""
    runs: dict[str, list[Path]] = {}
    for config in sorted(sweep_dir.glob("*/seed*/config.yaml")):
        run = config.parent
        metrics_path = run / METRICS_NAME
        if metrics_path.is_file() and "miou" in read_json(metrics_path).get("student", {}):
            runs.setdefault(run.parent.name, []).append(run)
    if not runs:
        raise PipelineError(f"{sweep_dir} holds no finished sweep runs (<variant>/seed<k>/metrics.json with a "
                            "student mIoU); run `python -m pipeline sweep configs/sweeps/compare_methods.yaml` first")
    return {variant: sorted(folders, key=lambda p: int(p.name.removeprefix("seed"))) for variant, folders in runs.items()}


def deploy_figures(run: Path, overrides: list[str]) -> dict[str, Any]:
    """Continue one run through strip/export/quantize/validate/benchmark and return its deployment
    figures: every backend x precision that was measured, FP32 and INT8 alike."""
    from stages import STAGES

    config = load_config(run / "config.yaml", overrides)
    metrics = Runner(config, run, STAGES).run(until=UNTIL)
    backends = metrics.get("backends", {})
    ort = backends.get("onnxruntime", {})
    latency = ort.get("latency_ms", {})
    return {
        "run_dir": str(run),
        "student_params": metrics.get("strip", {}).get("student_params"),
        "onnx_bytes": metrics.get("export", {}).get("size_bytes"),
        "onnxruntime_status": ort.get("status"),
        "onnxruntime_max_abs_diff": ort.get("max_abs_diff"),
        "onnxruntime_p50_ms": latency.get("p50"),
        "onnxruntime_p90_ms": latency.get("p90"),
        "benchmark": ort.get("benchmark"),
        "deployments": {key: {"status": entry.get("status"), "precision": entry.get("precision"),
                              "miou": entry.get("miou"), "miou_delta": entry.get("miou_delta"),
                              "p50_ms": entry.get("latency_ms", {}).get("p50")}
                        for key, entry in backends.items()
                        if "-" in key and entry.get("status") not in (Status.SKIPPED, None)},
        "pareto_points": backend_points(backends, "miou", prefix=f"{run.parent.name} / ",
                                        details={"method": run.parent.name}),
    }


def int8_figures(deployments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The INT8 student's mIoU, its change against PyTorch FP32 and its latency, per INT8 row that
    ran (post-training ``onnxruntime-int8``; a quantization-aware row where enabled)."""
    return {key: row for key, row in deployments.items() if row["precision"] == "int8" and row["miou"] is not None}


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _std(values: list[float]) -> float | None:
    return round(statistics.stdev(values), 4) if len(values) > 1 else None


def compare(sweep_dir: Path, baseline: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    runs = find_runs(sweep_dir)
    if baseline is None:
        baseline = next((name for name in ("baseline", "none") if name in runs), None)
    elif baseline not in runs:
        raise PipelineError(f"baseline variant '{baseline}' has no finished runs; variants: {', '.join(runs)}")
    per_run = {variant: [read_json(run / METRICS_NAME) for run in folders] for variant, folders in runs.items()}
    teacher_miou = per_run[next(iter(per_run))][0]["teacher"]["miou"]
    baseline_mean = _mean([m["student"]["miou"] for m in per_run[baseline]]) if baseline else None
    variants: dict[str, Any] = {}
    for variant, folders in runs.items():
        mious = [m["student"]["miou"] for m in per_run[variant]]
        mean = _mean(mious)
        gap = None if baseline_mean is None else teacher_miou - baseline_mean
        variants[variant] = {
            "methods": per_run[variant][0]["student"].get("methods"),
            "seeds": len(mious),
            "miou": mious,
            "miou_mean": mean,
            "miou_std": _std(mious),
            "gap_closure_percent": None if gap is None or abs(gap) < 1e-9 else round(100 * (mean - baseline_mean) / gap, 2),
            "seconds_per_step": _mean([m["student"]["seconds_per_step"] for m in per_run[variant]]),
            **deploy_figures(folders[0], overrides or []),
        }
        variants[variant]["int8"] = int8_figures(variants[variant]["deployments"])
    points = [point for v in variants.values() for point in v.pop("pareto_points")]
    return {"sweep_dir": str(sweep_dir), "teacher_miou": teacher_miou, "baseline": baseline, "variants": variants,
            "pareto": pareto_rows(points)}


def int8_survival_rows(table: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Per variant (first seed): PyTorch FP32 mIoU, each INT8 row's mIoU, change and latency, and the
    gain over the baseline variant in FP32 and in each INT8 row: does a distillation gain survive?"""
    int8_keys = sorted({key for v in table["variants"].values() for key in v["int8"]})
    base = table["variants"].get(table["baseline"] or "", {}).get("deployments", {})

    def gain(v: dict[str, Any], key: str) -> float | None:
        mine, theirs = v["deployments"].get(key, {}).get("miou"), base.get(key, {}).get("miou")
        return None if mine is None or theirs is None else round(mine - theirs, 2)

    header = ["variant", "FP32 mIoU %", "gain vs baseline (FP32)"]
    for key in int8_keys:
        header += [f"{key} mIoU %", "vs FP32", f"{key} p50 ms", f"gain vs baseline ({key})"]
    rows = []
    for name, v in table["variants"].items():
        row = [name, v["deployments"].get(REFERENCE, {}).get("miou"), gain(v, REFERENCE)]
        for key in int8_keys:
            entry = v["int8"].get(key, {})
            row += [entry.get("miou"), entry.get("miou_delta"), entry.get("p50_ms"), gain(v, key)]
        rows.append(row)
    return header, rows


def comparison_markdown(table: dict[str, Any]) -> str:
    rows = []
    for name, v in table["variants"].items():
        miou = "-" if v["miou_mean"] is None else (
            f"{v['miou_mean']:.2f} ± {v['miou_std']:.2f}" if v["miou_std"] is not None else f"{v['miou_mean']:.2f}")
        rows.append([name + (" (baseline)" if name == table["baseline"] else ""), v["seeds"], miou,
                     v["gap_closure_percent"], v["seconds_per_step"], v["student_params"], v["onnxruntime_p50_ms"],
                     v["onnxruntime_status"]])
    header = ["variant", "seeds", "student mIoU % (mean ± std)", "gap closure %", "s/step", "exported params",
              "ORT p50 ms", "ORT validation"]
    survival_header, survival_rows = int8_survival_rows(table)
    return "\n".join([
        f"# Distillation methods compared ({table['sweep_dir']})",
        "",
        f"Teacher val mIoU {table['teacher_miou']:.2f} %. Gap closure = (student - baseline) / (teacher - baseline) "
        "from mean mIoU; std over seeds. Params and ONNX Runtime latency (batch and threads from the runs' "
        "`benchmark` config) are measured on each variant's first seed: the architecture does not depend on it.",
        "",
        markdown_table(header, rows),
        "",
        "## Does the gain survive INT8?",
        "",
        "Each variant's first seed, exported and quantized by the run's own stages: the student's mIoU in PyTorch "
        "FP32 and as each INT8 model, and its gain over the baseline variant's first seed in each precision.",
        "",
        markdown_table(survival_header, survival_rows),
        "",
        "## Accuracy-latency Pareto frontier",
        "",
        "Every method x backend x precision measured (first seeds). On the frontier: no other deployment is both "
        "at least as fast and at least as accurate. Chart: `compare_methods_pareto.png`; rows: `pareto.json`.",
        "",
        pareto_table(table["pareto"]).markdown(),
        "",
    ])


def write_pareto_figures(out: Path, table: dict[str, Any]) -> None:
    """``pareto.json`` / ``pareto.md`` and the chart ``compare_methods_pareto.png`` in ``out``."""
    from pipeline.reporting import charts

    rows = table["pareto"]
    write_pareto(out, rows, {"sweep_dir": table["sweep_dir"], "metric": "miou",
                             "latency": "p50 ms, each run's benchmark config", "seeds": "first seed of each variant"})
    if rows:
        points = {row["label"]: (row["latency_ms"], row["score"]) for row in rows}
        png = charts.latency_vs_miou(points, {row["label"] for row in rows if row["on_front"]})
        atomic_write_bytes(out / "compare_methods_pareto.png", png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.benchmarks.compare_methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a finished sweep folder, e.g. exported/sweeps/compare_methods")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to the continued runs")
    parser.add_argument("--baseline", help="variant gap closure is measured against (default: baseline or none)")
    parser.add_argument("--out", type=Path, help="where to write compare_methods.{json,md} (default: sweep_dir)")
    args = parser.parse_args(argv)
    try:
        table = compare(args.sweep_dir, args.baseline, args.overrides)
    except (ConfigError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare_methods.json", table)
    markdown = comparison_markdown(table)
    atomic_write_text(out / "compare_methods.md", markdown)
    write_pareto_figures(out, table)
    print(markdown)
    print(f"written: {out / 'compare_methods.json'}, {out / 'compare_methods.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
