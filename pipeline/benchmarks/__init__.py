"""Benchmark commands that measure and write figures (JSON + Markdown); see docs/BENCHMARKS.md.

``python -m pipeline.benchmarks.tat``: TaT loss cost (SDPA vs materialised attention) and the
distillation step overhead; ``.compare_methods``: exported size and latency of a method sweep;
``.gpu_training``: images per second and peak memory of GPU training.
"""
