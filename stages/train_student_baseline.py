"""Stage 2: the student trained on labels alone, so every report shows what distillation bought."""

from __future__ import annotations

from pipeline import metrics_contract as keys
from pipeline.builders import build_student
from pipeline.data import dataset_info
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.training import SupervisedObjective
from stages.common import TRAINING_KEYS, run_training, seed_model_init


def run(ctx: StageContext) -> StageResult:
    seed_model_init(ctx.config, ctx.config.student.train)
    student = build_student(ctx.config, with_methods=False)
    objective = SupervisedObjective(student, ignore_index=dataset_info(ctx.config.data).ignore_index)
    return run_training(ctx, objective, ctx.config.student.train, keys.STUDENT_BASELINE, "baseline")


STAGE = Stage(
    name="train_student_baseline",
    run=run,
    config_keys=(*TRAINING_KEYS, "student"),
    distributed=True,
    enabled=lambda config: config.baseline.enabled,
    description="train the student with cross-entropy only (the no-distillation reference)",
)
