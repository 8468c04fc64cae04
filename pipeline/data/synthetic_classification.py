"""The embedded classification dataset: one dominant object per image, whose class is a texture
(striped / dotted / checkered) crossed with a shape (disc / square / triangle).

It reuses the segmentation dataset's renderer (:mod:`pipeline.data.synthetic`): a texture is
visible in any small patch, the shape only in the object's whole outline. Colours, orientation,
scale, illumination and noise are random. Labels are balanced: sample ``i`` has class
``i % num_classes``; everything else comes from ``(seed, split, index)``, so the same key always
renders the same bytes and nothing is stored.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data import synthetic
from pipeline.data.rendered import RenderedDataset, check_max_rotation

# Bump whenever the rendering changes: it is part of the dataset fingerprint.
GENERATOR_VERSION = 2
# The segmentation dataset's object classes; "background" is not an image class.
CLASS_NAMES: tuple[str, ...] = synthetic.CLASS_NAMES[1:]
_STREAM = 0xC1A55  # keeps these images independent of the segmentation images of the same seed


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in synthetic.SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {sorted(synthetic.SPLITS)}")
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    entropy = [int(seed) & 0xFFFF_FFFF_FFFF_FFFF, synthetic.SPLITS[split], int(index), _STREAM]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def render_classification_sample(seed: int, split: str, index: int, image_size: int,
                                 max_rotation: float = 180.0) -> tuple[np.ndarray, int]:
    """Render one sample: (uint8 HxWx3 image, class id). Pure function of its arguments."""
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    check_max_rotation(max_rotation)
    label = index % len(CLASS_NAMES)
    rng = _rng(seed, split, index)
    canvas = synthetic._Canvas(image_size, rng)
    # One object, larger and more central than in segmentation: its whole outline (the shape half
    # of the class) stays inside the image. + 1: segmentation ids count background as 0.
    half = image_size * rng.uniform(0.5, 0.7) / 2
    cy, cx = rng.uniform(0.4 * image_size, 0.6 * image_size, 2)
    synthetic._draw_object(canvas, label + 1, cy, cx, half, max_rotation)
    return synthetic.finish_image(canvas.image, rng, image_size), label


class SyntheticClassification(RenderedDataset[tuple[np.ndarray, int]]):
    """``size`` samples of one split as (float CHW image tensor, int64 label), cached after rendering.

    ``transform`` is albumentations-style, called as ``transform(image=uint8 HxWx3)`` and returning
    ``{"image": CHW tensor}``; ``None`` means the evaluation transform (normalise + to tensor).
    :meth:`raw` gives the untransformed (uint8 HxWx3 image, class id).
    """

    classes = CLASS_NAMES

    def render(self, index: int) -> tuple[np.ndarray, int]:
        return render_classification_sample(self.seed, self.split, index, self.image_size, self.max_rotation)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.raw(i)
        return self.transform(image=image)["image"].float(), torch.tensor(label, dtype=torch.long)
