"""What differs between tasks, behind one interface, so stages stay task-agnostic.

A :class:`Task` builds the networks for a :class:`~pipeline.config.ModelConfig`, and makes the
:class:`Evaluator` that turns logits and targets into the task's figures: the scalars logged
per epoch (``val_<name>`` in history.jsonl) and the summary written to metrics.json. Both
tasks train with cross-entropy on ``(logits, targets)`` (``F.cross_entropy`` handles (B, K) and
(B, K, H, W) alike, ignoring the dataset's ``ignore_index``), and an exported model is compared
with PyTorch the same way for both: logits element-wise (class axis 1), then the headline metric
(:attr:`Task.metric`) with a one-sided tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from pipeline.config import ModelConfig
from pipeline.data import DatasetInfo
from pipeline.registry import Registry


class Evaluator(Protocol):
    """Accumulates one split's predictions; numbers are percentages (0..100)."""

    def update(self, logits: Any, targets: Any) -> None:
        """Add a batch: logits (B, K, ...) and integer targets (B, ...), tensors or arrays."""
        ...

    def scalars(self) -> dict[str, float]:
        """Unrounded headline figures, logged per epoch as ``val_<name>``."""
        ...

    def summary(self) -> dict[str, Any]:
        """The model's entry in metrics.json (rounded; may hold per-class tables)."""
        ...

    @property
    def ignore_index(self) -> int:
        """The target value that is not scored (and not in the val loss)."""
        ...

    def reduce(self, sum_counts: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace the counts by ``sum_counts(counts)``: their sum over DDP ranks."""
        ...


class Task:
    name: ClassVar[str]
    metric: ClassVar[str]  # headline key in metrics.json ("miou", "top1")
    metric_label: ClassVar[str]  # how tables and logs name it

    def build_model(self, cfg: ModelConfig, num_classes: int, neck: nn.Module | None = None) -> nn.Module:
        raise NotImplementedError

    def evaluator(self, info: DatasetInfo) -> Evaluator:
        raise NotImplementedError

    def collate(self, batch: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """DataLoader ``collate_fn`` for val batches: stacks (image, target) pairs."""
        return default_collate(batch)

    # ModelConfig keys that belong to the other task (left out of descriptions of this task's models).
    foreign_model_keys: ClassVar[tuple[str, ...]] = ()

    def describe_model(self, cfg: ModelConfig) -> dict[str, Any]:
        """The model config keys this task reads, JSON-able (ONNX metadata, reports)."""
        return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in self.foreign_model_keys}

    def export_metadata(self, info: DatasetInfo) -> dict[str, str]:
        """Task-specific ONNX ``metadata_props`` (besides task, classes, input size, mean/std)."""
        return {}

    def evaluate_predictions(self, predict: Callable[[np.ndarray], np.ndarray],
                             batches: Iterable[tuple[np.ndarray, np.ndarray]], info: DatasetInfo) -> Evaluator:
        """Evaluate any backend's ``predict`` (float32 NCHW images -> logits) over numpy batches."""
        evaluator = self.evaluator(info)
        for images, targets in batches:
            evaluator.update(predict(images), targets)
        return evaluator


# Filled by the task modules, which pipeline/tasks/__init__.py imports: any import of the package knows both.
TASKS: Registry[Task] = Registry("task")
