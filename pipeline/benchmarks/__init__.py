"""Benchmark commands that write figures (JSON + Markdown) for docs/BENCHMARKS.md.

``python -m pipeline.benchmarks.tat --out DIR``: TaT loss cost (SDPA vs materialised attention)
and the distillation step overhead at the default settings.
"""
