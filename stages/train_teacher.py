"""Stage 1: train the teacher (DeepLabV3+ on a ResNet) with cross-entropy."""

from __future__ import annotations

from pipeline import metrics_contract as keys
from pipeline.builders import build_teacher
from pipeline.data import dataset_info
from pipeline.orchestration.stage import Stage, StageContext, StageResult
from pipeline.training import SupervisedObjective
from stages.common import TRAINING_KEYS, run_training, seed_model_init


def run(ctx: StageContext) -> StageResult:
    seed_model_init(ctx.config, ctx.config.teacher.train)
    teacher = build_teacher(ctx.config)
    objective = SupervisedObjective(teacher, ignore_index=dataset_info(ctx.config.data).ignore_index)
    return run_training(ctx, objective, ctx.config.teacher.train, keys.TEACHER, "teacher")


STAGE = Stage(
    name="train_teacher",
    run=run,
    config_keys=(*TRAINING_KEYS, "teacher"),
    distributed=True,
    description="train the teacher with cross-entropy",
)
