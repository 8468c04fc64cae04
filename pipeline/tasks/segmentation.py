"""Semantic segmentation: DeepLabV3(+) models, per-pixel targets (ignore 255), mIoU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor, nn

from pipeline.config import CLASSIFICATION_MODEL_KEYS, ModelConfig
from pipeline.data import DatasetInfo, segmentation_collate
from pipeline.metrics import ConfusionMatrix
from pipeline.models import build_segmentation_model
from pipeline.tasks.base import TASKS, Task


def segmentation_summary(matrix: ConfusionMatrix, class_names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "miou": round(matrix.miou(), 4),
        "pixel_accuracy": round(matrix.pixel_accuracy(), 4),
        "per_class_iou": {name: _percent(iou) for name, iou in zip(class_names, matrix.per_class_iou())},
    }


def _percent(value: float) -> float | None:
    return None if value != value else round(float(value) * 100, 4)  # NaN -> None (class absent)


class SegmentationEvaluator:
    def __init__(self, info: DatasetInfo) -> None:
        self.class_names = info.class_names
        self.matrix = ConfusionMatrix(info.num_classes, info.ignore_index)

    @classmethod
    def for_classes(cls, num_classes: int, ignore_index: int = 255) -> SegmentationEvaluator:
        """When only the class count is known (class names become their indices)."""
        names = tuple(str(i) for i in range(num_classes))
        return cls(DatasetInfo(num_classes, names, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ignore_index))

    @property
    def ignore_index(self) -> int:
        return self.matrix.ignore_index

    def reduce(self, sum_counts: Callable[[np.ndarray], np.ndarray]) -> None:
        self.matrix = ConfusionMatrix.from_counts(sum_counts(self.matrix.matrix), self.matrix.ignore_index)

    def update(self, logits: Any, targets: Any) -> None:
        self.matrix.update(np.asarray(logits).argmax(1), np.asarray(targets))

    def scalars(self) -> dict[str, float]:
        return {"miou": self.matrix.miou(), "pixel_accuracy": self.matrix.pixel_accuracy()}

    def summary(self) -> dict[str, Any]:
        return segmentation_summary(self.matrix, self.class_names)


class SegmentationTask(Task):
    name = "segmentation"
    metric = "miou"
    metric_label = "mIoU"
    foreign_model_keys = CLASSIFICATION_MODEL_KEYS

    def build_model(self, cfg: ModelConfig, num_classes: int, neck: nn.Module | None = None) -> nn.Module:
        return build_segmentation_model(cfg, num_classes, neck=neck)

    def evaluator(self, info: DatasetInfo) -> SegmentationEvaluator:
        return SegmentationEvaluator(info)

    def collate(self, batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        return segmentation_collate(batch)  # real val images differ in size: pad with the ignore label

    def export_metadata(self, info: DatasetInfo) -> dict[str, str]:
        return {"ignore_index": str(info.ignore_index)}


TASKS.register(SegmentationTask.name, SegmentationTask())
