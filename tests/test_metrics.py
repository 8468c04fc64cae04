import numpy as np
import pytest
import torch

from pipeline.metrics import ConfusionMatrix, topk_accuracy

# 3 classes on a 2x3 map, worked out by hand:
#   target  0 0 1     pred  0 1 1
#           1 2 2           1 2 0
# class 0: TP 1, FP 1 (the bottom-right pixel), FN 1 (top-middle)  -> IoU 1/3
# class 1: TP 2, FP 1 (top-middle),             FN 0               -> IoU 2/3
# class 2: TP 1, FP 0,                          FN 1 (bottom-right) -> IoU 1/2
# mIoU = (1/3 + 2/3 + 1/2) / 3 = 50 %, pixel accuracy = 4/6
TARGET = np.array([[0, 0, 1], [1, 2, 2]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])


def test_hand_computed_example():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(cm.matrix, expected)
    np.testing.assert_allclose(cm.per_class_iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.miou() == pytest.approx(50.0)
    assert cm.pixel_accuracy() == pytest.approx(400 / 6)
    assert cm.matrix.dtype == np.int64


def test_torch_inputs_match_numpy():
    cm = ConfusionMatrix(3)
    cm.update(torch.from_numpy(PRED)[None], torch.from_numpy(TARGET)[None])
    assert cm.miou() == pytest.approx(50.0)


def test_ignore_pixels_do_not_count():
    target = np.concatenate([TARGET, [[255, 255, 255]]])
    pred = np.concatenate([PRED, [[2, 0, 1]]])  # wrong guesses on ignored pixels
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(pred, target)
    assert cm.matrix.sum() == 6
    assert cm.miou() == pytest.approx(50.0)


def test_absent_classes_are_excluded():
    cm = ConfusionMatrix(5)  # classes 3 and 4 never appear in target or prediction
    cm.update(PRED, TARGET)
    iou = cm.per_class_iou()
    assert np.isnan(iou[3]) and np.isnan(iou[4])
    assert cm.miou() == pytest.approx(50.0)


def test_class_only_predicted_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 2]), np.array([0, 0]))  # class 2 predicted but never present
    np.testing.assert_allclose(cm.per_class_iou(), [0.5, np.nan, 0.0])
    assert cm.miou() == pytest.approx(25.0)


def test_perfect_prediction_is_100():
    cm = ConfusionMatrix(3)
    cm.update(TARGET, TARGET)
    assert cm.miou() == 100.0
    assert cm.pixel_accuracy() == 100.0


def test_merge_equals_update_on_concatenation():
    rng = np.random.default_rng(0)
    t1, p1 = rng.integers(0, 4, (2, 8, 8)), rng.integers(0, 4, (2, 8, 8))
    t2, p2 = rng.integers(0, 4, (3, 8, 8)), rng.integers(0, 4, (3, 8, 8))
    t1[0, 0, :3] = 255
    a, b, whole = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(p1, t1)
    b.update(p2, t2)
    a.merge(b)
    whole.update(np.concatenate([p1, p2]), np.concatenate([t1, t2]))
    np.testing.assert_array_equal(a.matrix, whole.matrix)
    assert a.miou() == whole.miou()


def test_shape_mismatch_and_out_of_range_are_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError):
        cm.update(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError):
        cm.update(np.array([0]), np.array([7]))


def test_empty_matrix_reports_nan():
    assert np.isnan(ConfusionMatrix(3).miou())


def test_topk_hand_example():
    logits = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.9],  # ranking 3, 1, 2, 0; target 1 -> top-2 hit
            [0.8, 0.1, 0.05, 0.05],  # ranking 0, ...;     target 0 -> top-1 hit
            [0.3, 0.2, 0.4, 0.1],  # ranking 2, 0, 1, 3; target 1 -> top-3 hit
        ]
    )
    target = torch.tensor([1, 0, 1])
    acc = topk_accuracy(logits, target, ks=(1, 2, 3))
    assert acc[1] == pytest.approx(100 / 3)
    assert acc[2] == pytest.approx(200 / 3)
    assert acc[3] == pytest.approx(100.0)
    # k larger than the number of classes counts every sample as a hit
    assert topk_accuracy(logits.numpy(), target.numpy(), ks=(5,))[5] == pytest.approx(100.0)
