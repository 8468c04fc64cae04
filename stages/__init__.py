"""The pipeline's stages in run order; each module defines STAGE (see pipeline/orchestration/stage.py)."""

from stages import (
    benchmark,
    build_engine,
    deploy,
    distill_student,
    export_onnx,
    qat_student,
    quantize,
    report,
    strip,
    teacher_centers,
    train_student_baseline,
    train_teacher,
    validate,
)

STAGES = (
    train_teacher.STAGE,
    teacher_centers.STAGE,
    train_student_baseline.STAGE,
    distill_student.STAGE,
    strip.STAGE,
    export_onnx.STAGE,
    quantize.STAGE,
    qat_student.STAGE,
    build_engine.STAGE,
    validate.STAGE,
    benchmark.STAGE,
    deploy.STAGE,
    report.STAGE,
)

__all__ = ["STAGES"]
