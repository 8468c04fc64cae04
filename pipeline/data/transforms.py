"""Albumentations pipelines for segmentation (albumentations 2.x API).

Images go in as uint8 HxWx3, masks as integer HxW class ids. Out come a float32 CHW tensor
normalised with ImageNet statistics and an int64 HW mask tensor. Pixels that augmentation
invents (padding after a zoom-out, rotation corners) get :data:`IGNORE_INDEX` in the mask.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network version check on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from pipeline.config import AugmentConfig  # noqa: E402

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The mask label of pixels that count for nothing (augmentation padding, unlabelled pixels).
IGNORE_INDEX = 255


def _mask_to_int64(mask: np.ndarray, **_: object) -> np.ndarray:
    return mask.astype(np.int64, copy=False)


def _finish() -> list[A.BasicTransform]:
    return [
        A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0),
        A.Lambda(name="mask_to_int64", mask=_mask_to_int64),
        ToTensorV2(),
    ]


def train_transform(aug: AugmentConfig, image_size: int) -> A.Compose:
    """Flip, random scale, optional rotation, pad/crop back to ``image_size``, colour jitter."""
    ops: list[A.BasicTransform] = []
    if aug.hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    low, high = aug.scale
    if (low, high) != (1.0, 1.0):
        ops.append(
            A.RandomScale(
                scale_limit=(low - 1.0, high - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    if aug.rotate_degrees > 0:
        ops.append(
            A.Rotate(
                limit=(-aug.rotate_degrees, aug.rotate_degrees),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
                p=0.5,
            )
        )
    ops += [
        A.PadIfNeeded(
            min_height=image_size,
            min_width=image_size,
            position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(height=image_size, width=image_size),
    ]
    if aug.color_jitter > 0:
        j = aug.color_jitter
        ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=0.8))
    return A.Compose(ops + _finish())


def eval_transform(max_side: int | None = None) -> A.Compose:
    """Normalise and convert to tensors; optionally shrink so the longer side is ``max_side``."""
    resize: list[A.BasicTransform] = []
    if max_side is not None:
        resize.append(A.LongestMaxSize(max_size=max_side, interpolation=cv2.INTER_LINEAR,
                                       mask_interpolation=cv2.INTER_NEAREST))
    return A.Compose(resize + _finish())


def reseed_augmentation(dataset: object, seed: int) -> None:
    """Seed a dataset's albumentations pipeline. Albumentations keeps its own RNG, which global seeds
    never reach, so without this every run (and every DataLoader worker) draws its own augmentations."""
    while hasattr(dataset, "dataset") and not hasattr(dataset, "transform"):  # Subset and friends
        dataset = dataset.dataset
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(seed) % 2**32)


def seed_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: each worker's augmentations follow torch's per-worker seed."""
    import torch

    info = torch.utils.data.get_worker_info()
    if info is not None:
        reseed_augmentation(info.dataset, torch.initial_seed())
