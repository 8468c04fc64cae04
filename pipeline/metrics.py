"""Segmentation and classification metrics.

:class:`ConfusionMatrix` accumulates a ``[target, pred]`` pixel count matrix with one
``bincount`` per update; mIoU, per-class IoU and pixel accuracy are read off it. Percentages
are 0..100.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """Pixel confusion matrix, rows = target class, columns = predicted class."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch of predicted and target class ids (same shape; ignore pixels skipped)."""
        p = _as_numpy(pred).reshape(-1).astype(np.int64, copy=False)
        t = _as_numpy(target).reshape(-1).astype(np.int64, copy=False)
        if p.shape != t.shape:
            raise ValueError(
                f"pred and target must have the same number of pixels, got "
                f"{_as_numpy(pred).shape} and {_as_numpy(target).shape}"
            )
        keep = t != self.ignore_index
        if not keep.all():
            p, t = p[keep], t[keep]
        n = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= n):
            raise ValueError(f"target holds class ids outside [0, {n}) other than ignore_index {self.ignore_index}")
        if p.size and (p.min() < 0 or p.max() >= n):
            raise ValueError(f"pred holds class ids outside [0, {n})")
        self._matrix += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    @classmethod
    def from_counts(cls, counts: np.ndarray, ignore_index: int = 255) -> "ConfusionMatrix":
        """A matrix holding ``counts`` ([target, pred] pixel counts), e.g. summed over processes."""
        matrix = cls(counts.shape[0], ignore_index)
        matrix._matrix += counts.astype(np.int64)
        return matrix

    def merge(self, other: "ConfusionMatrix") -> None:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class matrix into {self.num_classes}-class one")
        self._matrix += other._matrix

    def reset(self) -> None:
        self._matrix[:] = 0

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix.copy()

    def per_class_iou(self) -> np.ndarray:
        """IoU per class in 0..1; NaN for classes absent from both target and prediction."""
        m = self._matrix
        tp = np.diag(m).astype(np.float64)
        union = m.sum(0) + m.sum(1) - np.diag(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes present in target or prediction, percent."""
        iou = self.per_class_iou()
        if np.isnan(iou).all():
            return float("nan")
        return float(np.nanmean(iou) * 100.0)

    def pixel_accuracy(self) -> float:
        total = self._matrix.sum()
        return float(np.trace(self._matrix) / total * 100.0) if total else float("nan")


def topk_accuracy(logits: Any, target: Any, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for ``logits`` [N, C] and integer ``target`` [N]."""
    logits_t = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    target_t = target if isinstance(target, torch.Tensor) else torch.as_tensor(np.asarray(target))
    if logits_t.ndim != 2 or target_t.shape != logits_t.shape[:1]:
        raise ValueError(f"expected logits [N, C] and target [N], got {tuple(logits_t.shape)} and {tuple(target_t.shape)}")
    ks = tuple(ks)
    n, c = logits_t.shape
    if n == 0:
        return {k: float("nan") for k in ks}
    top = logits_t.topk(min(max(ks), c), dim=1).indices
    hits = top == target_t.reshape(-1, 1).to(top.device)
    return {k: float(hits[:, :k].any(dim=1).float().mean().item() * 100.0) for k in ks}
