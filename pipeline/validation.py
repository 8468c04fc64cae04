"""Parity in two tiers: tensors (one backend's logits against the FP32 reference on the same
inputs) and task (mIoU of a backend on the validation split)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.metrics import ConfusionMatrix
from pipeline.runtime.base import Predictor


def tensor_parity(reference: np.ndarray, candidate: np.ndarray, *, rel_floor: float = 1e-3) -> dict[str, float]:
    """Element-wise agreement of ``candidate`` logits with ``reference`` logits (same shape).

    ``max_rel_diff`` divides by ``max(|reference|, rel_floor)`` so logits near zero do not turn
    a harmless 1e-6 difference into a huge relative error. ``argmax_agreement`` is the percent of
    pixels whose predicted class (argmax over axis 1, the class axis of NCHW) is the same.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    if ref.size == 0:
        raise ValueError("cannot compare empty arrays")
    diff = np.abs(ref - cand)
    rel = diff / np.maximum(np.abs(ref), rel_floor)
    if ref.ndim >= 2:
        agree = np.argmax(ref, axis=1) == np.argmax(cand, axis=1)
    else:
        agree = np.asarray(np.argmax(ref) == np.argmax(cand))
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(rel.max()),
        "argmax_agreement": float(100.0 * agree.mean()),
    }


def evaluate_predictor(
    predictor: Predictor,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    ignore_index: int = 255,
) -> ConfusionMatrix:
    """Confusion matrix of ``predictor`` over ``(images NCHW float32, masks NHW int)`` batches."""
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for images, masks in batches:
        logits = predictor.predict(images)
        matrix.update(np.argmax(logits, axis=1), np.asarray(masks))
    return matrix
