"""What every on-disk segmentation reader shares: layout checks that say what was expected where,
image/mask decoding, and one Dataset over a list of (image, mask) files.

Each reader (voc.py, cocostuff.py, cityscapes.py, folder.py) only knows its layout: which files
form a split and how a stored label becomes a class id (0..K-1, or 255 = ignore).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.transforms import IGNORE_INDEX
from pipeline.errors import DatasetLayoutError


def require_root(root: Path | None, dataset: str, holds: str) -> Path:
    if root is None:
        raise DatasetLayoutError(f"data.dataset={dataset} needs data.root: set it to the folder that contains {holds}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"data.root {root} is not a folder; set data.root to the folder that contains {holds}")
    return root


def require(path: Path, root: Path, fix: str) -> Path:
    """``path`` must exist; otherwise name it relative to ``root`` and say how to fix it."""
    if not path.exists():
        raise DatasetLayoutError(f"expected {path.relative_to(root).as_posix()} under {root}; {fix}")
    return path


def read_list(path: Path) -> list[str]:
    """Sample ids of a split list: one a line; the first token's stem when lines hold paths."""
    ids = []
    for line in path.read_text().splitlines():
        token = line.strip().split()[0] if line.strip() else ""
        if token:
            ids.append(Path(token).stem if "/" in token or "." in token else token)
    if not ids:
        raise DatasetLayoutError(f"split list {path} is empty")
    return ids


def read_image(path: Path) -> np.ndarray:
    """uint8 HxWx3 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_index_png(path: Path) -> np.ndarray:
    """Class ids of a palette ("P") or grayscale ("L") PNG, as stored (no palette colours)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(
                f"mask {path} is a {image.mode} image; expected a palette or grayscale PNG whose pixel values are "
                "class ids (colour-coded RGB masks must be converted to ids first)"
            )
        return np.asarray(image)


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path


class SegmentationFiles(Dataset):
    """(image, mask) files -> transformed (CHW float tensor, HW int64 mask); labels 0..K-1 or 255."""

    def __init__(
        self,
        samples: Sequence[Sample],
        read_mask: Callable[[Path], np.ndarray],
        num_classes: int,
        transform: Callable,
    ) -> None:
        self.samples = list(samples)
        self.read_mask = read_mask
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed sample: uint8 HxWx3 image, uint8 HxW class ids."""
        sample = self.samples[index]
        image = read_image(sample.image)
        mask = self.read_mask(sample.mask)
        problems = pair_problems(sample, image, mask, self.num_classes)
        if problems:
            raise ValueError(f"{problems[0][1]}: {problems[0][2]}")
        return image, mask.astype(np.uint8)

    def problems(self, index: int) -> list[tuple[str, Path, str]]:
        """(kind, file, detail) of everything wrong with sample ``index``; empty when it reads cleanly."""
        sample = self.samples[index]
        found, image, mask = [], None, None
        try:
            image = read_image(sample.image)
        except Exception as exc:  # noqa: BLE001 - any decoder error means the same to the user
            found.append(("unreadable image", sample.image, f"{type(exc).__name__}: {exc}"))
        try:
            mask = self.read_mask(sample.mask)
        except Exception as exc:  # noqa: BLE001
            found.append(("unreadable mask", sample.mask, str(exc)))
        if image is not None and mask is not None:
            found += pair_problems(sample, image, mask, self.num_classes)
        return found

    def __getitem__(self, index: int):
        image, mask = self.raw(index)
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"]

    def ids(self) -> list[str]:
        return [sample.image.stem for sample in self.samples]


def pair_problems(sample: Sample, image: np.ndarray, mask: np.ndarray,
                  num_classes: int) -> list[tuple[str, Path, str]]:
    """A mask that does not fit its image, or holds ids outside the class list."""
    if mask.shape != image.shape[:2]:
        return [("mask size differs from its image", sample.mask,
                 f"mask {mask.shape[1]}x{mask.shape[0]}, image {sample.image.name} {image.shape[1]}x{image.shape[0]}")]
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        ids = ", ".join(str(int(i)) for i in np.unique(mask[bad])[:5])
        return [("mask ids outside the class list", sample.mask,
                 f"ids {ids} (classes are 0..{num_classes - 1}, {IGNORE_INDEX} = ignore)")]
    return []


def pair_by_stem(images: Sequence[Path], masks_dir: Path, mask_name: Callable[[Path], str], root: Path,
                 fix: str) -> list[Sample]:
    """Pair each image with its mask file ``masks_dir / mask_name(image)``; a missing mask is an error."""
    samples = []
    for image in images:
        mask = masks_dir / mask_name(image)
        require(mask, root, fix)
        samples.append(Sample(image, mask))
    return samples
