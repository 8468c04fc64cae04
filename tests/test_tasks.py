"""The task interface: each task's evaluator gives the figures its metrics.json keys promise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data import DatasetInfo
from pipeline.metrics import ConfusionMatrix, topk_accuracy
from pipeline.tasks import get_task

MEAN = STD = (0.5, 0.5, 0.5)


def test_classification_top1_top5_over_batches_equal_the_whole_split():
    info = DatasetInfo(10, tuple("abcdefghij"), MEAN, STD, -100)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(23, 10, generator=generator)
    targets = torch.randint(0, 10, (23,), generator=generator)
    evaluator = get_task("classification").evaluator(info)
    for start in range(0, 23, 8):  # batches of 8, 8, 7; numpy like an ONNX backend
        evaluator.update(logits[start:start + 8].numpy(), targets[start:start + 8].numpy())
    expected = topk_accuracy(logits, targets)
    assert evaluator.scalars() == pytest.approx({"top1": expected[1], "top5": expected[5]})
    assert set(evaluator.summary()) == {"top1", "top5", "images"} and evaluator.summary()["images"] == 23


def test_classification_rejects_per_pixel_logits():
    evaluator = get_task("classification").evaluator(DatasetInfo(3, ("a", "b", "c"), MEAN, STD, -100))
    with pytest.raises(ValueError, match=r"expected logits \(B, 3\)"):
        evaluator.update(np.zeros((2, 3, 4, 4)), np.zeros((2, 4, 4)))


def test_segmentation_evaluator_is_the_confusion_matrix_with_the_same_keys():
    info = DatasetInfo(3, ("bg", "x", "y"), MEAN, STD, 255)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    masks = rng.integers(0, 3, (2, 5, 5))
    masks[0, 0, 0] = 255
    evaluator = get_task("segmentation").evaluator(info)
    evaluator.update(torch.from_numpy(logits), torch.from_numpy(masks))
    matrix = ConfusionMatrix(3, 255)
    matrix.update(logits.argmax(1), masks)
    assert evaluator.scalars() == {"miou": matrix.miou(), "pixel_accuracy": matrix.pixel_accuracy()}
    assert set(evaluator.summary()) == {"miou", "pixel_accuracy", "per_class_iou"}


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid tasks: classification, segmentation"):
        get_task("detection")
