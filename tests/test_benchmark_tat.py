"""The TaT benchmark command runs end to end on tiny sizes and writes its figures (the real
sizes are measured on a quiet machine: see docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.benchmarks.tat import grid_for, main

ROOT = Path(__file__).resolve().parents[1]


def test_grid_for_factors_positions_as_square_as_possible():
    assert grid_for(1024) == (32, 32) and grid_for(16384) == (128, 128) and grid_for(12) == (3, 4)


def test_benchmark_writes_json_and_markdown_on_tiny_sizes(tmp_path):
    out = tmp_path / "bench"
    assert main(["--out", str(out), "--positions", "16", "--channels", "8", "--repeats", "1", "--warmup", "0",
                 "--overhead-repeats", "1", "--threads", "1", "--max-naive-gib", "1",
                 "--config", str(ROOT / "configs" / "smoke.yaml"), "student.train.batch_size=2"]) == 0
    result = json.loads((out / "tat.json").read_text())
    rows = {row["implementation"]: row for row in result["attention"]}
    assert set(rows) == {"sdpa", "naive"}
    for row in rows.values():
        assert row["positions"] == 16 and row["grid"] == [4, 4]
        assert row["median_ms"] > 0
        assert row["peak_mb"] is not None and row["peak_mb"] >= 0
    overhead = result["overhead"]
    assert [m["name"] for m in overhead["methods"]] == ["tat_seg"]
    timing = overhead["timing"]
    expected = timing["distill_step"]["median_ms"] / (timing["teacher_forward"]["median_ms"]
                                                      + timing["student_step"]["median_ms"])
    assert abs(overhead["overhead"] - expected) < 1e-3
    markdown = (out / "tat.md").read_text()
    assert "| 16 | 4x4 |" in markdown and "overhead" in markdown


def test_naive_attention_beyond_the_memory_limit_is_skipped_not_attempted(tmp_path):
    out = tmp_path / "bench"
    assert main(["--out", str(out), "--positions", "16384", "--channels", "8", "--implementations", "naive",
                 "--max-naive-gib", "0.5", "--skip-overhead"]) == 0
    row = json.loads((out / "tat.json").read_text())["attention"][0]
    assert "skipped" in row and "GiB" in row["skipped"]
