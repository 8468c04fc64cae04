"""Validation's comparator (as Polygraphy splits a runner, which runs every backend on the same
inputs, from a comparator): what one backend's outputs are worth against the reference's, in two
tiers, tensors (logits on the same inputs) and task (the task metric on the validation split), and
the verdict of a per-precision tolerance policy. Running the backends is the validate stage's part.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig, ValidateConfig
from pipeline.metrics import ConfusionMatrix
from pipeline.runtime.base import Predictor
from pipeline.status import Status


@dataclass(frozen=True)
class BackendRun:
    """What one backend produced on the validation inputs."""

    logits: np.ndarray  # on the saved parity inputs
    summary: dict[str, Any]  # the task's figures on the val split (mIoU, per-class IoU, ...)
    runtime: dict[str, Any]  # the predictor's description (backend, provider, versions)
    # (input shape, logits) on the seeded random input of each shape checked; empty where none is.
    shape_logits: tuple[tuple[tuple[int, ...], np.ndarray], ...] = ()


@dataclass(frozen=True)
class TolerancePolicy:
    """How far a backend may be from the reference, by precision: the task metric may drop by at most
    ``metric_drop`` points (one-sided: a gain passes); float32-model rows (fp32, tf32) must also match
    the reference logits within ``logit_atol`` at every shape checked."""

    metric_drop: dict[str, float]
    logit_atol: dict[str, float]

    @classmethod
    def from_config(cls, v: ValidateConfig) -> "TolerancePolicy":
        return cls({"fp32": v.miou_tolerance, "tf32": v.tf32_miou_tolerance, "fp16": v.fp16_miou_tolerance,
                    "int8": v.int8_miou_tolerance},
                   {"fp32": v.atol, "tf32": v.tf32_atol})

    def checks_shapes(self, precision: str) -> bool:
        return precision in self.logit_atol


def validation_batches(config: PipelineConfig,
                       max_images: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images NCHW float32, targets) batches of the val split that validation scores: the first
    ``max_images`` (default ``validate.max_images``; None = the whole split)."""
    from torch.utils.data import DataLoader, Subset

    from pipeline.data import build_dataset
    from pipeline.tasks import get_task

    dataset = build_dataset(config.data, "val")
    limit = max_images or config.validate_.max_images
    if limit:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    for images, targets in DataLoader(dataset, batch_size=config.validate_.batch_size, shuffle=False,
                                      collate_fn=get_task(config.task).collate):
        yield images.numpy(), targets.numpy()


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


def compare(reference: BackendRun, candidate: BackendRun, precision: str, policy: TolerancePolicy,
            metric: str, metric_label: str) -> dict[str, Any]:
    """The candidate's metrics.json row (less what names the backend): its task figures, its distance
    from the reference, logit parity (at every shape, for float32-model rows) and the verdict."""
    parity = tensor_parity(reference.logits, candidate.logits)
    delta = candidate.summary[metric] - reference.summary[metric]
    row: dict[str, Any] = {**candidate.summary, f"{metric}_delta": round(delta, 4), **parity,
                           "runtime": candidate.runtime}
    worst, atol = None, policy.logit_atol.get(precision)
    if atol is not None:
        # The FP32 model must match the reference tensor for tensor, at every shape the dynamic model accepts.
        row["parity_shapes"] = [shape_parity(shape, ref, cand) for (shape, ref), (_, cand)
                                in zip(reference.shape_logits, candidate.shape_logits, strict=True)]
        worst = max([parity["max_abs_diff"], *(p["max_abs_diff"] for p in row["parity_shapes"])])
        row["max_abs_diff_all_shapes"] = worst
    row.update(verdict(precision, metric_label, delta, policy.metric_drop[precision], worst, atol))
    return row


def shape_parity(shape: tuple[int, ...], reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    parity = tensor_parity(reference, candidate)
    return {"shape": list(shape), "max_abs_diff": parity["max_abs_diff"],
            "argmax_agreement": parity["argmax_agreement"]}
