"""The backend benchmark table: one row per backend x precision, written as JSON, CSV and Markdown.

Rows are flat dicts with the :data:`COLUMNS` keys (missing values are None), so every writer
and every reader (CI gates, report) sees the same fields.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_json, atomic_write_text
from pipeline.reporting.tables import markdown_table

COLUMNS = ("key", "status", "backend", "precision", "provider", "input_shape", "size_mb", "miou", "miou_delta",
           "max_abs_diff", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "throughput", "iters", "threads",
           "reason")
MARKDOWN_COLUMNS = (("key", "backend-precision"), ("status", "status"), ("provider", "provider"),
                    ("input_shape", "input"),
                    ("size_mb", "size MB"), ("miou", "mIoU %"), ("miou_delta", "delta"),
                    ("max_abs_diff", "max|diff|"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p95_ms", "p95 ms"),
                    ("p99_ms", "p99 ms"), ("mean_ms", "mean ms"), ("throughput", "img/s"), ("reason", "note"))


def table_row(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Flatten one ``backends.<key>`` metrics entry into a table row."""
    latency = entry.get("latency_ms", {})
    bench = entry.get("benchmark", {})
    size = entry.get("size_bytes")
    row = {
        "key": key,
        "status": entry.get("status"),
        "backend": entry.get("backend"),
        "precision": entry.get("precision"),
        "provider": bench.get("provider") or entry.get("runtime", {}).get("provider"),
        "input_shape": "x".join(map(str, bench["input_shape"])) if bench.get("input_shape") else None,
        "size_mb": None if size is None else round(size / 2**20, 3),
        "miou": entry.get("miou"),
        "miou_delta": entry.get("miou_delta"),
        "max_abs_diff": entry.get("max_abs_diff"),
        "p50_ms": latency.get("p50"),
        "p90_ms": latency.get("p90"),
        "p95_ms": latency.get("p95"),
        "p99_ms": latency.get("p99"),
        "mean_ms": latency.get("mean"),
        "throughput": latency.get("throughput"),
        "iters": latency.get("iters"),
        "threads": bench.get("threads"),
        "reason": entry.get("reason"),
    }
    return {column: row.get(column) for column in COLUMNS}


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
    return buffer.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]], context: dict[str, Any] | None = None) -> str:
    table = markdown_table([label for _, label in MARKDOWN_COLUMNS],
                           [[row.get(key) for key, _ in MARKDOWN_COLUMNS] for row in rows])
    if not context:
        return table + "\n"
    facts = "\n".join(f"- {key}: {value}" for key, value in context.items())
    return f"{table}\n\n{facts}\n"


def write_table(directory: Path, stem: str, rows: Sequence[dict[str, Any]], context: dict[str, Any]) -> list[Path]:
    """Write ``<stem>.json`` (rows + context), ``<stem>.csv`` and ``<stem>.md``; returns the paths."""
    directory = Path(directory)
    paths = [directory / f"{stem}.{ext}" for ext in ("json", "csv", "md")]
    atomic_write_json(paths[0], {"rows": list(rows), **context})
    atomic_write_text(paths[1], to_csv(rows))
    atomic_write_text(paths[2], to_markdown(rows, _flat_context(context)))
    return paths


def _flat_context(context: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in context.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat
