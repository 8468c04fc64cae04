"""Config -> objects: the teacher, the student (with any inference-time layer its methods add),
the Distiller, and the data loaders. Stages call these; nothing else builds models."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pipeline.config import ConfigError, PipelineConfig
from pipeline.data import DatasetInfo, build_dataset, dataset_info
from pipeline.distill import Distiller, build_method, feature_info, method_class
from pipeline.distill.base import TeacherCentersRequest
from pipeline.distill.registry import method_weight, parse_options
from pipeline.tasks import get_task


def build_teacher(config: PipelineConfig) -> nn.Module:
    return get_task(config.task).build_model(config.teacher.model, dataset_info(config.data).num_classes)


def teacher_centers_requests(config: PipelineConfig) -> dict[str, TeacherCentersRequest]:
    """Method name -> the teacher k-means centres it needs (empty: the teacher_centers stage is off)."""
    requests = {}
    for spec in config.distill.methods:
        request = method_class(spec.name).teacher_centers_request(parse_options(spec))
        if request is not None:
            requests[spec.name] = request
    return requests


def student_neck(config: PipelineConfig, channels: int) -> nn.Module | None:
    """The inference-time layer a method adds to the student (LetKD), or None."""
    necks = []
    for spec in config.distill.methods:
        neck = method_class(spec.name).inference_neck(parse_options(spec), channels)
        if neck is not None:
            necks.append(neck)
    if len(necks) > 1:
        raise ValueError("only one distillation method may add an inference-time layer to the student")
    return necks[0] if necks else None


def build_student(config: PipelineConfig, with_methods: bool = True) -> nn.Module:
    """The deployable student; ``with_methods=False`` gives the plain baseline architecture."""
    num_classes = dataset_info(config.data).num_classes
    task = get_task(config.task)
    plain = task.build_model(config.student.model, num_classes)
    if not with_methods:
        return plain
    neck = student_neck(config, plain.feature_channels["stage4"])
    if neck is None:
        return plain
    return task.build_model(config.student.model, num_classes, neck=neck)


def build_distiller(
    config: PipelineConfig,
    teacher: nn.Module,
    student: nn.Module,
    artifacts: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> Distiller:
    """``artifacts``: method name -> its precomputed artifacts (e.g. {"letkd": {"teacher_centers": C}}).

    Artifacts are needed to compute losses, not to load or strip a trained Distiller.
    """
    student_info, teacher_info = feature_info(student), feature_info(teacher)
    artifacts = artifacts or {}
    methods = []
    for index, spec in enumerate(config.distill.methods):
        # Settings that only fail against these models (feature sizes, widths) fail here, before training.
        try:
            method_class(spec.name).check_input_size(parse_options(spec), student_info, teacher_info,
                                                     config.data.image_size)
            methods.append((method_weight(spec),
                            build_method(spec, student_info, teacher_info, artifacts.get(spec.name))))
        except ValueError as exc:
            raise ConfigError(f"distill.methods[{index}] ({spec.name}): {exc}") from None
    info = dataset_info(config.data)
    return Distiller(student, teacher, methods, ce_weight=config.distill.ce_weight,
                     teacher_mode=config.distill.teacher_mode, ignore_index=info.ignore_index,
                     warmup_steps=config.distill.warmup_steps)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def data_splits(config: PipelineConfig) -> tuple[DatasetInfo, Dataset, Dataset]:
    return dataset_info(config.data), build_dataset(config.data, "train"), build_dataset(config.data, "val")


def val_loader(config: PipelineConfig, val_set: Dataset, batch_size: int | None = None) -> DataLoader:
    """Val batches in order (segmentation: images of different sizes padded with the ignore label)."""
    return DataLoader(val_set, batch_size=batch_size or config.data.val_batch_size, shuffle=False,
                      num_workers=config.data.workers, collate_fn=get_task(config.task).collate)


def check_distillation(config: PipelineConfig) -> None:
    """Build the models and methods once (random weights) so impossible distillation settings are
    a ConfigError before any stage trains; costs about a second. Pretrained weights are not
    loaded: shapes do not depend on them, and a missing file is the training stage's error."""
    unweighted = config.model_copy(update={
        role: getattr(config, role).model_copy(update={
            "model": getattr(config, role).model.model_copy(update={"pretrained": None})})
        for role in ("teacher", "student")})
    build_distiller(unweighted, build_teacher(unweighted), build_student(unweighted))
