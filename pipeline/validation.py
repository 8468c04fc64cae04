"""Parity in two tiers: tensors (one backend's logits against the FP32 reference on the same
inputs) and task (mIoU of a backend on the validation split)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.metrics import ConfusionMatrix
from pipeline.runtime.base import Predictor
from pipeline.status import Status


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


# What to try when a precision misses its tolerance, most likely cause first.
_HINTS = {
    "fp32": "an FP32 back end should match PyTorch almost exactly: suspect the export (try another export.opset) "
            "or TF32 on the GPU; validate.atol / validate.miou_tolerance only if the difference is understood",
    "tf32": "TF32 rounds FP32 inputs to 10 mantissa bits: widen validate.tf32_atol / tf32_miou_tolerance if the "
            "difference is of that size, else suspect the export",
    "fp16": "FP16 overflow or precision loss: keep the failing layers in FP32, or widen validate.fp16_miou_tolerance",
    "int8": "try quantize.reduce_range: true (7-bit weights; needed on x86 CPUs without VNNI), more "
            "quantize.calibration_images, sensitive layers in float (quantize.float_nodes), or a wider "
            "validate.int8_miou_tolerance",
}


def verdict(precision: str, metric_label: str, delta: float, tolerance: float,
            max_abs_diff: float | None = None, atol: float | None = None) -> dict[str, str]:
    """``{"status": "passed"}`` or ``{"status": "validation failed", "reason": ..., "hint": ...}``.

    The task metric may drop by at most ``tolerance`` points against PyTorch (one-sided: a gain
    passes); FP32 (and TF32) back ends must also match the reference logits within ``atol``
    (``max_abs_diff`` is the worst over every shape checked).
    """
    broken = []
    if -delta > tolerance:
        broken.append(f"{metric_label} {delta:+.2f} points vs PyTorch, beyond the {precision} tolerance of "
                      f"-{tolerance:g}")
    if atol is not None and max_abs_diff is not None and max_abs_diff > atol:
        setting = "validate.tf32_atol" if precision == "tf32" else "validate.atol"
        broken.append(f"max abs logit difference {max_abs_diff:.2e} > {setting} {atol:g}")
    if not broken:
        return {"status": Status.PASSED}
    return {"status": Status.VALIDATION_FAILED, "reason": "; ".join(broken), "hint": _HINTS.get(precision, "")}
