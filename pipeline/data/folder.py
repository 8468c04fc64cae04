"""A generic segmentation folder: your own images and index masks, with a class list.

``data.root`` holds::

    images/{split}/<name>.{jpg,jpeg,png,bmp}
    masks/{split}/<name>.png       palette or grayscale PNG, pixel value = class id, 255 = ignore
    classes.txt                    one class name a line, line k = class id k (or data.class_names_file)
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.files import (
    DatasetLayoutError,
    SegmentationFiles,
    pair_by_stem,
    read_index_png,
    require,
    require_root,
)

DEFAULT_SPLITS = {"train": "train", "val": "val"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_LAYOUT = "images/<split>/, masks/<split>/ and classes.txt"


def class_names(root: Path | None, names_file: Path | None) -> tuple[str, ...]:
    root = require_root(root, "folder", _LAYOUT)
    path = Path(names_file).expanduser() if names_file is not None else root / "classes.txt"
    if not path.is_file():
        raise DatasetLayoutError(f"class list {path} does not exist; write one class name a line (line k = id k) "
                                 "there, or set data.class_names_file")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise DatasetLayoutError(f"class list {path} is empty; write one class name a line")
    if len(names) > 255:
        raise DatasetLayoutError(f"class list {path} has {len(names)} classes; at most 255 fit (255 = ignore)")
    return names


def build(root: Path | None, split: str, names_file: Path | None, transform) -> SegmentationFiles:
    names = class_names(root, names_file)
    root = Path(root).expanduser()  # checked by class_names
    image_dir = require(root / "images" / split, root, f"the folder dataset reads {_LAYOUT}")
    mask_dir = require(root / "masks" / split, root, f"the folder dataset reads {_LAYOUT}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetLayoutError(f"expected images ({', '.join(IMAGE_SUFFIXES)}) in images/{split}/ under {root}; "
                                 "found none")
    samples = pair_by_stem(images, mask_dir, lambda p: f"{p.stem}.png", root,
                           f"every image in images/{split}/ needs a mask of the same name in masks/{split}/")
    return SegmentationFiles(samples, read_index_png, len(names), transform)
