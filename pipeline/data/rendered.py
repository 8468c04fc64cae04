"""The part the embedded datasets share: samples rendered on demand from (seed, split, index),
cached in memory after the first render, and transformed on every access."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from torch.utils.data import Dataset

Sample = TypeVar("Sample")
# Split name -> the number mixed into every sample's random key (so splits never share a sample).
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


def check_max_rotation(max_rotation: float) -> None:
    if not 0 <= max_rotation <= 180:
        raise ValueError(f"max_rotation must be between 0 and 180 degrees, got {max_rotation}")


class RenderedDataset(Dataset, Generic[Sample]):
    """``size`` samples of one split; subclasses say how one is rendered (:meth:`render`) and how a
    raw sample becomes tensors (``__getitem__``). ``transform`` is albumentations-style; ``None``
    means the evaluation transform (normalise + to tensor). ``cache=False`` re-renders every time.
    ``max_rotation``: how far, in degrees, the drawn shapes turn from their base orientation (both
    embedded datasets draw the same shapes; 180 = any orientation)."""

    classes: tuple[str, ...] = ()

    def __init__(self, split: str, size: int, image_size: int, seed: int, transform: Callable | None = None,
                 cache: bool = True, max_rotation: float = 180.0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are {sorted(SPLITS)}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        check_max_rotation(max_rotation)
        if transform is None:
            from pipeline.data.transforms import eval_transform

            transform = eval_transform()
        self.split = split
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.max_rotation = max_rotation
        self.transform: Callable[..., dict[str, Any]] = transform
        self._cache: list[Sample | None] | None = [None] * size if cache else None

    def render(self, index: int) -> Sample:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.size

    def raw(self, i: int) -> Sample:
        """The untransformed sample (``render``'s output), from the cache when it was rendered before."""
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} samples")
        i %= self.size
        if self._cache is None:
            return self.render(i)
        sample = self._cache[i]
        if sample is None:
            sample = self._cache[i] = self.render(i)
        return sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, size={self.size}, image_size={self.image_size}, "
                f"seed={self.seed}, max_rotation={self.max_rotation}, classes={len(self.classes)})")


__all__ = ["SPLITS", "RenderedDataset", "check_max_rotation"]
