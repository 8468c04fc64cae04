"""Config -> objects: the teacher, the student (with any inference-time layer its methods add),
the Distiller, and the data loaders. Stages call these; nothing else builds models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.config import PipelineConfig
from pipeline.data import DatasetInfo, build_dataset, dataset_info
from pipeline.distill import Distiller, build_method, feature_info, method_class
from pipeline.distill.registry import parse_options
from pipeline.tasks import get_task


def build_teacher(config: PipelineConfig) -> nn.Module:
    return get_task(config.task).build_model(config.teacher.model, dataset_info(config.data).num_classes)


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


def build_distiller(config: PipelineConfig, teacher: nn.Module, student: nn.Module) -> Distiller:
    student_info, teacher_info = feature_info(student), feature_info(teacher)
    methods = [(spec.weight, build_method(spec, student_info, teacher_info)) for spec in config.distill.methods]
    info = dataset_info(config.data)
    return Distiller(student, teacher, methods, ce_weight=config.distill.ce_weight,
                     teacher_mode=config.distill.teacher_mode, ignore_index=info.ignore_index)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def data_splits(config: PipelineConfig) -> tuple[DatasetInfo, Dataset, Dataset]:
    return dataset_info(config.data), build_dataset(config.data, "train"), build_dataset(config.data, "val")


def val_loader(config: PipelineConfig, val_set: Dataset, batch_size: int = 32) -> DataLoader:
    return DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=config.data.workers)
