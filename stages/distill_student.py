"""Stage 3: distil the student from the frozen teacher with the configured methods."""

from __future__ import annotations

from pipeline import metrics_contract as keys
from pipeline.builders import build_distiller, build_student, build_teacher, load_weights
from pipeline.distill.registry import method_weight
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from stages.common import TRAINING_KEYS, load_centers, run_training, seed_model_init


def run(ctx: StageContext) -> StageResult:
    seed_model_init(ctx.config, ctx.config.student.train)
    # The student first: with the same seed it starts from the baseline student's initial weights.
    student = build_student(ctx.config)
    teacher = load_weights(build_teacher(ctx.config), ctx.input_path("train_teacher", "weights"))
    distiller = build_distiller(ctx.config, teacher, student, artifacts=load_centers(ctx))
    result = run_training(ctx, distiller, ctx.config.student.train, keys.STUDENT, "distill")
    # The resolved weights, so the record says what was trained even when the config left them out.
    result.metrics[keys.STUDENT]["methods"] = [{**spec.model_dump(), "weight": method_weight(spec)}
                                            for spec in ctx.config.distill.methods]
    return result


STAGE = Stage(
    name="distill_student",
    run=run,
    inputs=("train_teacher", "teacher_centers"),
    config_keys=(*TRAINING_KEYS, "student", "distill", "teacher.model"),
    distributed=True,
    description="train the student against the teacher (TaT, KD, ... in the method slot)",
)
