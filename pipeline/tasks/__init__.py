"""The tasks the pipeline runs (``task:`` in the config): segmentation and classification."""

from __future__ import annotations

from pipeline.tasks.base import TASKS, Evaluator, Task
from pipeline.tasks.classification import ClassificationTask
from pipeline.tasks.segmentation import SegmentationTask


def get_task(name: str) -> Task:
    return TASKS.get(name)


__all__ = ["TASKS", "ClassificationTask", "Evaluator", "SegmentationTask", "Task", "get_task"]
