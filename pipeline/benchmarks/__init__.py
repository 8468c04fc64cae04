"""Benchmark commands that measure and write figures (JSON + Markdown); see docs/BENCHMARKS.md."""
