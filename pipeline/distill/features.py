"""Small feature operations several methods share (resizing, attention maps, pooled vectors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def resize_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of a (B, C, H, W) map to ``size`` (a no-op when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis' spatial attention: channel mean of |f|^p, flattened, L2-normalised.

    (B, C, H, W) -> (B, H*W). Invariant to a positive rescaling of the feature.
    """
    return F.normalize(feature.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def pooled(feature: Tensor) -> Tensor:
    """One vector per sample: global average pooling of a map, or the flattened tensor otherwise."""
    return feature.mean(dim=(2, 3)) if feature.dim() == 4 else feature.flatten(1)


def check_batch(feature: Tensor, method: str) -> None:
    """Relation-based losses compare samples with each other; one sample carries no relation."""
    if feature.shape[0] < 2:
        raise ValueError(f"method '{method}' compares the samples of a batch and needs batch_size >= 2")
