"""The accuracy-latency Pareto frontier over every measured (model, backend, precision).

A point is on the frontier when no other point is at least as fast *and* at least as accurate,
and strictly better in one of the two: for every point off it there is a deployment that is
faster without being less accurate, or more accurate without being slower. Equal points are
both on it. The report draws and lists it for one run's backends; the method comparison for
every method x precision x backend that ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_json, atomic_write_text
from pipeline.reporting.tables import Table


@dataclass(frozen=True)
class ParetoPoint:
    """One measured deployment: ``label`` names it; ``details`` (method, backend, precision, ...)
    become table columns."""

    label: str
    latency_ms: float
    score: float  # the task metric, higher is better (mIoU %, top-1 %)
    details: Mapping[str, Any] = field(default_factory=dict)

    def dominates(self, other: "ParetoPoint") -> bool:
        no_worse = self.latency_ms <= other.latency_ms and self.score >= other.score
        better = self.latency_ms < other.latency_ms or self.score > other.score
        return no_worse and better


def backend_points(backends: Mapping[str, Mapping[str, Any]], metric: str, prefix: str = "",
                   details: Mapping[str, Any] | None = None) -> list[ParetoPoint]:
    """One point per ``backends.<key>`` entry of a metrics.json that was both scored (``metric``) and
    benchmarked (p50); the legacy aliases (``pytorch``, ``onnxruntime``: no ``-``) repeat another
    entry and are left out. Labels are ``prefix + key``."""
    points = []
    for key, entry in backends.items():
        p50 = entry.get("latency_ms", {}).get("p50") if isinstance(entry, Mapping) else None
        if "-" in key and p50 is not None and entry.get(metric) is not None:
            points.append(ParetoPoint(prefix + key, p50, entry[metric],
                                      {**(details or {}), "backend": entry.get("backend"),
                                       "precision": entry.get("precision")}))
    return points


def pareto_front(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """The points no other point dominates, fastest first (a handful of points: the quadratic
    definition is the clearest code)."""
    front = [p for p in points if not any(q.dominates(p) for q in points)]
    return sorted(front, key=lambda p: (p.latency_ms, -p.score))


def pareto_rows(points: Sequence[ParetoPoint]) -> list[dict[str, Any]]:
    """Every point as a flat row, fastest first, with ``on_front`` and, for a point off the
    frontier, the frontier point that dominates it at the lowest latency (``dominated_by``)."""
    front = pareto_front(points)
    rows = []
    for point in sorted(points, key=lambda p: (p.latency_ms, -p.score)):
        dominator = next((q for q in front if q.dominates(point)), None)
        rows.append({"label": point.label, **point.details, "latency_ms": point.latency_ms, "score": point.score,
                     "on_front": point in front, "dominated_by": None if dominator is None else dominator.label})
    return rows


def pareto_table(rows: Sequence[dict[str, Any]], score_label: str = "mIoU %") -> Table:
    detail_keys = [key for key in rows[0] if key not in ("label", "latency_ms", "score", "on_front", "dominated_by")] \
        if rows else []
    header = ["deployment", *detail_keys, "p50 ms", score_label, "on the frontier", "dominated by"]
    body = [[row["label"], *(row.get(key) for key in detail_keys), row["latency_ms"], row["score"],
             "yes" if row["on_front"] else "no", row["dominated_by"]] for row in rows]
    return Table(header, body)


def write_pareto(directory: Path, rows: Sequence[dict[str, Any]], context: dict[str, Any],
                 score_label: str = "mIoU %") -> list[Path]:
    """``pareto.json`` (rows + context) and ``pareto.md`` in ``directory``; returns the paths."""
    directory = Path(directory)
    json_path, md_path = directory / "pareto.json", directory / "pareto.md"
    atomic_write_json(json_path, {"rows": list(rows), "front": [r["label"] for r in rows if r["on_front"]], **context})
    facts = "".join(f"- {key}: {value}\n" for key, value in context.items())
    atomic_write_text(md_path, f"# Accuracy-latency Pareto frontier\n\n{pareto_table(rows, score_label).markdown()}\n\n"
                               f"{facts}")
    return [json_path, md_path]
