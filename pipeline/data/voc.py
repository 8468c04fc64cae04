"""Pascal VOC 2012 segmentation, with the SBD-augmented training list.

Layout read (``data.root`` is the folder that contains ``VOCdevkit``)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png          palette PNGs (pixel value = class id, 255 = border)
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png       SBD-augmented masks (grayscale class ids)
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt   the 10,582-image list

The ``train_aug`` split is the common "SegmentationClassAug" layout (DeepLab, mmsegmentation):
its list holds one id a line, or two paths a line (``/JPEGImages/<id>.jpg
/SegmentationClassAug/<id>.png``); either way the id is what is read. Its masks come from
SegmentationClassAug; every other split's masks come from SegmentationClass.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.files import (
    Sample,
    SegmentationFiles,
    read_index_png,
    read_list,
    require,
    require_root,
)

CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
DEFAULT_SPLITS = {"train": "train_aug", "val": "val"}
AUG_SPLITS = ("train_aug",)
_BASE = Path("VOCdevkit") / "VOC2012"
_ROOT_HINT = "set data.root to the folder that contains VOCdevkit"


def samples(root: Path | None, split: str) -> list[Sample]:
    root = require_root(root, "voc", "VOCdevkit/VOC2012")
    base = require(root / _BASE, root, _ROOT_HINT)
    lists = root / _BASE / "ImageSets" / "Segmentation"
    fix = _ROOT_HINT
    if split in AUG_SPLITS:
        fix = ("train_aug needs the SBD-augmented list and SegmentationClassAug masks; add them, "
               "or set data.train_split=train to train on the 1,464 VOC images only")
    ids = read_list(require(lists / f"{split}.txt", root, fix))
    mask_dir = require(base / ("SegmentationClassAug" if split in AUG_SPLITS else "SegmentationClass"), root, fix)
    image_dir = require(base / "JPEGImages", root, _ROOT_HINT)
    out = []
    for sample_id in ids:
        image, mask = image_dir / f"{sample_id}.jpg", mask_dir / f"{sample_id}.png"
        require(image, root, f"{split}.txt lists '{sample_id}' but its image is missing")
        require(mask, root, f"{split}.txt lists '{sample_id}' but its mask is missing")
        out.append(Sample(image, mask))
    return out


def build(root: Path | None, split: str, transform) -> SegmentationFiles:
    return SegmentationFiles(samples(root, split), read_index_png, len(CLASS_NAMES), transform)
