"""Cityscapes fine annotations, labelIds mapped to the 19 train ids.

``data.root`` is the folder that holds::

    leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

Every labelId that is not one of the 19 evaluated classes becomes 255 (ignore), as in the official
cityscapesScripts ``labels.py`` table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.files import (
    DatasetLayoutError,
    Sample,
    SegmentationFiles,
    pair_by_stem,
    read_index_png,
    require,
    require_root,
)
from pipeline.data.transforms import IGNORE_INDEX

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# labelId of each train id, in train-id order (cityscapesScripts labels.py).
LABEL_IDS: tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
DEFAULT_SPLITS = {"train": "train", "val": "val"}
_ROOT_HINT = "set data.root to the Cityscapes folder that holds leftImg8bit/ and gtFine/"
_IMAGE_SUFFIX, _MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"

_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_TO_TRAIN_ID[list(LABEL_IDS)] = np.arange(len(LABEL_IDS), dtype=np.uint8)


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return _TO_TRAIN_ID[label_ids.astype(np.uint8)]


def read_label_ids(path: Path) -> np.ndarray:
    return to_train_ids(read_index_png(path))


def samples(root: Path | None, split: str) -> list[Sample]:
    root = require_root(root, "cityscapes", "leftImg8bit/ and gtFine/")
    image_dir = require(root / "leftImg8bit" / split, root, _ROOT_HINT)
    mask_dir = require(root / "gtFine" / split, root, _ROOT_HINT)
    images = sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
    if not images:
        raise DatasetLayoutError(f"expected leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX} under {root}; found none")
    out: list[Sample] = []
    for city_images in _by_city(images):
        city = city_images[0].parent.name
        out += pair_by_stem(city_images, mask_dir / city, lambda p: p.name.replace(_IMAGE_SUFFIX, _MASK_SUFFIX),
                            root, f"every leftImg8bit image needs its gtFine *{_MASK_SUFFIX} file")
    return out


def _by_city(images: list[Path]) -> list[list[Path]]:
    cities: dict[str, list[Path]] = {}
    for image in images:
        cities.setdefault(image.parent.name, []).append(image)
    return list(cities.values())


def build(root: Path | None, split: str, transform) -> SegmentationFiles:
    return SegmentationFiles(samples(root, split), read_label_ids, len(CLASS_NAMES), transform)
