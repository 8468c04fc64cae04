"""The metrics.json contract: the top-level key of every section a run writes, named once here.

Stages return their figures under these keys (:class:`~pipeline.orchestration.stage.StageResult`),
the runner merges them into ``<run>/metrics.json``, and CI gates, reports and the command line's
summary read them back. docs/metrics.md documents each section; tests/test_metrics_contract.py
holds that document, this module and a real run's metrics.json together.
"""

from __future__ import annotations

RUN = "run"  # what was run: config, fingerprints, versions (the runner)
STAGES = "stages"  # per stage: seconds, status, fingerprint (the runner)
TEACHER = "teacher"  # the trained models' val figures (the three training stages)
STUDENT_BASELINE = "student_baseline"
STUDENT = "student"
TEACHER_CENTERS = "teacher_centers"  # k-means centres of a teacher feature, when a method needs them
STRIP = "strip"  # the strip proof
ARTIFACTS = "artifacts"  # the exported model and the deploy bundle, relative to the run folder
EXPORT = "export"  # how the ONNX model was exported
QUANTIZE = "quantize"  # how each lower-precision model was made, or why it failed
QAT = "qat"  # the quantization-aware fine-tune: its val figures and its Q/DQ models
ENGINES = "engines"  # TensorRT engines, or why they were skipped
BACKENDS = "backends"  # every backend x precision: validation and latency
MACHINE = "machine"  # CPU / GPU, threads and versions the latency was measured with
BENCHMARK = "benchmark"  # latency settings, speed-ups, the table files
DISTILLATION = "distillation"  # gap closure of the distilled student

# In the order a full run writes them.
TOP_LEVEL_KEYS: tuple[str, ...] = (RUN, STAGES, TEACHER, TEACHER_CENTERS, STUDENT_BASELINE, STUDENT, STRIP, ARTIFACTS,
                                   EXPORT, QUANTIZE, QAT, ENGINES, BACKENDS, MACHINE, BENCHMARK, DISTILLATION)
MODEL_ROLES: tuple[str, ...] = (TEACHER, STUDENT_BASELINE, STUDENT)
