"""Stage 3: distil the student from the frozen teacher with the configured methods."""

from __future__ import annotations

from pipeline.builders import build_distiller, build_student, build_teacher, load_weights
from pipeline.stage import Stage, StageContext, StageResult
from stages.common import TRAINING_CODE, TRAINING_KEYS, run_training


def run(ctx: StageContext) -> StageResult:
    teacher = load_weights(build_teacher(ctx.config), ctx.input_path("train_teacher", "weights"))
    distiller = build_distiller(ctx.config, teacher, build_student(ctx.config))
    result = run_training(ctx, distiller, ctx.config.student.train, "student", "distill")
    result.metrics["student"]["methods"] = [spec.model_dump() for spec in ctx.config.distill.methods]
    return result


STAGE = Stage(
    name="distill_student",
    run=run,
    inputs=("train_teacher",),
    config_keys=(*TRAINING_KEYS, "student", "distill", "teacher.model"),
    code=TRAINING_CODE,
    distributed=True,
    description="train the student against the teacher (TaT, KD, ... in the method slot)",
)
