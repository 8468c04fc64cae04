"""What every classification dataset shares: the sample convention and the transforms.

A classification sample is ``(float32 CHW image tensor normalised with ImageNet statistics,
int64 scalar label)``; a batch is ``(B, 3, H, W), (B,)``. Two transform styles:

* ``"fixed"``: images already at ``image_size`` (embedded data, CIFAR-100). Training reuses the
  segmentation geometry (flip, random scale, pad/crop back to size, colour jitter) on the image
  alone; evaluation only normalises (and resizes if the stored size differs).
* ``"imagenet"``: photos of any size. Training: random-resized crop (scale 0.08..1) + flip +
  colour jitter; evaluation: resize the shorter side to ``image_size / 0.875``, centre crop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pipeline.config import AugmentConfig
from pipeline.data.transforms import MEAN, STD, A, ToTensorV2, cv2, train_transform

TransformStyle = Literal["fixed", "imagenet"]
# The standard ImageNet evaluation crop: resize to size / 0.875 (256 for 224), then centre crop.
CENTRE_CROP_FRACTION = 0.875


def _finish() -> list:
    return [A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0), ToTensorV2()]


def classification_train_transform(aug: AugmentConfig, image_size: int, style: TransformStyle) -> Callable:
    if style == "fixed":
        return train_transform(aug, image_size)  # image-only call: the mask steps are no-ops
    ops: list = [A.RandomResizedCrop(size=(image_size, image_size), scale=(0.08, 1.0), interpolation=cv2.INTER_LINEAR)]
    if aug.hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if aug.color_jitter > 0:
        j = aug.color_jitter
        ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=0.8))
    return A.Compose(ops + _finish())


def classification_eval_transform(image_size: int, style: TransformStyle, stored_size: int | None = None) -> Callable:
    """``stored_size``: the side of the stored images for the ``"fixed"`` style (resized if different)."""
    if style == "fixed":
        resize = [] if stored_size in (None, image_size) else [A.Resize(image_size, image_size)]
        return A.Compose(resize + _finish())
    return A.Compose([
        A.SmallestMaxSize(max_size=round(image_size / CENTRE_CROP_FRACTION), interpolation=cv2.INTER_LINEAR),
        A.CenterCrop(image_size, image_size),
        *_finish(),
    ])
