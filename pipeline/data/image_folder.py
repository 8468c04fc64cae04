"""An ImageNet-style class-per-folder tree (torchvision ``ImageFolder`` layout).

``data.root`` holds ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` (also .jpg, .jpeg, .png,
any case). Classes are the sorted folder names of ``train``; ``val`` may hold a subset of them.
ImageNet's official validation archive is flat (``val/ILSVRC2012_val_*.JPEG`` plus a label
file): sort it into class folders first (the widely used ``valprep.sh`` does exactly that).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import DatasetLayoutError

EXTENSIONS = (".jpeg", ".jpg", ".png")
SPLIT_FOLDERS = {"train": "train", "val": "val"}


def _layout(root: Path) -> str:
    return f"{root}/{{train,val}}/<class>/*.JPEG"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def split_folder(root: Path | None, split: str) -> Path:
    if root is None:
        raise DatasetLayoutError("data.root is not set; dataset image_folder needs a folder laid out as "
                                "ROOT/{train,val}/<class>/*.JPEG")
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r}; valid splits are {sorted(SPLIT_FOLDERS)}")
    root = Path(root)
    folder = root / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise DatasetLayoutError(f"image folder split not found: {folder} (expected {_layout(root)})")
    return folder


def read_class_names(root: Path | None) -> tuple[str, ...]:
    """Sorted class folder names of ``train``."""
    folder = split_folder(root, "train")
    names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not names:
        loose = _images_in(folder)
        hint = f" ({len(loose)} images lie directly in it: move each into a folder named after its class)" if loose else ""
        raise ValueError(f"{folder} has no class folders{hint}; expected {_layout(Path(root))}")
    return names


def scan_split(root: Path | None, split: str, class_names: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(image path, class id) for every image of ``split``, in class then file-name order."""
    folder = split_folder(root, split)
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    unknown = [name for name in found if name not in class_names]
    if unknown:
        raise ValueError(f"{folder} has class folders that train/ does not have: {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''}; every class needs a train/ folder")
    if not found:
        loose = _images_in(folder)
        hint = (f" ({len(loose)} images lie directly in it; ImageNet's flat val/ must be sorted into class "
                "folders first, e.g. with valprep.sh)") if loose else ""
        raise ValueError(f"{folder} has no class folders{hint}; expected {_layout(Path(root))}")
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for name in found:
        images = _images_in(folder / name)
        if not images:
            empty.append(name)
        samples += [(path, class_names.index(name)) for path in images]
    if split == "train" and empty:
        raise ValueError(f"{folder}: class folders without images ({', '.join(empty[:5])}); expected "
                         f"*.JPEG/*.jpg/*.png files in each")
    if not samples:
        raise ValueError(f"{folder} holds no images; expected {_layout(Path(root))}")
    return samples


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path}; remove it or replace it with a valid JPEG/PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageFolderClassification(Dataset):
    """Images decoded on access (the tree can be far larger than memory)."""

    def __init__(self, root: Path | None, split: str, transform: Callable) -> None:
        self.classes = read_class_names(root)
        self.samples = scan_split(root, split, self.classes)
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[i]
        image = self.transform(image=read_rgb(path))["image"]
        return image.float(), torch.tensor(label, dtype=torch.long)
