"""The tasks the pipeline runs (``task:`` in the config): segmentation and classification."""

from __future__ import annotations

from pipeline.tasks.base import Evaluator, Task
from pipeline.tasks.classification import ClassificationTask
from pipeline.tasks.segmentation import SegmentationTask

TASKS: dict[str, Task] = {task.name: task for task in (SegmentationTask(), ClassificationTask())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks are {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "ClassificationTask", "Evaluator", "SegmentationTask", "Task", "get_task"]
