"""Image classification: ResNet / MobileNetV2 classifiers, one class id per image, top-1/top-5."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import SEGMENTATION_MODEL_KEYS, ModelConfig
from pipeline.data import DatasetInfo
from pipeline.metrics import topk_accuracy
from pipeline.models.classification import build_classification_model
from pipeline.tasks.base import TASKS, Task

TOP_K = (1, 5)


class ClassificationEvaluator:
    """Counts top-k hits batch by batch (the logits of a whole ImageNet val split are never held)."""

    def __init__(self, info: DatasetInfo) -> None:
        self.num_classes = info.num_classes
        self.ignore_index = info.ignore_index
        self.hits = {k: 0.0 for k in TOP_K}
        self.count = 0

    def reduce(self, sum_counts: Callable[[np.ndarray], np.ndarray]) -> None:
        summed = sum_counts(np.array([*self.hits.values(), self.count], dtype=np.float64))
        self.hits = {k: float(v) for k, v in zip(TOP_K, summed[:-1])}
        self.count = int(round(summed[-1]))

    def update(self, logits: Any, targets: Any) -> None:
        logits_t = torch.as_tensor(np.asarray(logits)) if not isinstance(logits, torch.Tensor) else logits
        targets_t = torch.as_tensor(np.asarray(targets)) if not isinstance(targets, torch.Tensor) else targets
        if logits_t.ndim != 2 or logits_t.shape[1] != self.num_classes:
            raise ValueError(f"expected logits (B, {self.num_classes}), got {tuple(logits_t.shape)}")
        n = int(targets_t.numel())
        if n == 0:
            return
        for k, accuracy in topk_accuracy(logits_t, targets_t.reshape(-1), TOP_K).items():
            self.hits[k] += accuracy * n / 100.0
        self.count += n

    def scalars(self) -> dict[str, float]:
        if not self.count:
            return {f"top{k}": float("nan") for k in TOP_K}
        return {f"top{k}": 100.0 * self.hits[k] / self.count for k in TOP_K}

    def summary(self) -> dict[str, Any]:
        return {**{name: round(value, 4) for name, value in self.scalars().items()}, "images": self.count}


class ClassificationTask(Task):
    name = "classification"
    metric = "top1"
    metric_label = "top-1"
    foreign_model_keys = SEGMENTATION_MODEL_KEYS

    def build_model(self, cfg: ModelConfig, num_classes: int, neck: nn.Module | None = None) -> nn.Module:
        return build_classification_model(cfg.backbone, num_classes, stem=cfg.stem, width_mult=cfg.width_mult,
                                          pretrained=cfg.pretrained, neck=neck)

    def evaluator(self, info: DatasetInfo) -> ClassificationEvaluator:
        return ClassificationEvaluator(info)

    def export_metadata(self, info: DatasetInfo) -> dict[str, str]:
        return {"output_layout": "logits (batch, num_classes) float32, before softmax"}


TASKS.register(ClassificationTask.name, ClassificationTask())
