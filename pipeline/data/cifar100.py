"""CIFAR-100 in its real on-disk format: the "python version" pickles.

``data.root`` is the folder that holds ``cifar-100-python/`` (as extracted from
``cifar-100-python.tar.gz``), or that folder itself. Inside:

* ``train`` (50,000 images) and ``test`` (10,000 images): pickled dicts with ``b'data'`` (N x 3072
  uint8, each row the 1024 red, then green, then blue values of a 32x32 image in row-major
  order) and ``b'fine_labels'`` (N ints in 0..99);
* ``meta``: a pickled dict with ``b'fine_label_names'`` (100 byte strings).

The pipeline's ``val`` split is CIFAR's ``test`` file (CIFAR-100 has no separate validation set).
The files are Python pickles; they are read with an unpickler that builds only what the real files
hold (dicts, lists, strings, numbers and numpy arrays), so a hostile file cannot run code.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import DatasetLayoutError

FOLDER = "cifar-100-python"
FILES = {"train": "train", "val": "test"}
IMAGE_SIZE = 32
NUM_CLASSES = 100
_SOURCE = "extract cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) there"


def cifar100_folder(root: Path | None) -> Path:
    """The ``cifar-100-python`` folder under ``root`` (or ``root`` itself); an error says what is missing."""
    if root is None:
        raise DatasetLayoutError(f"data.root is not set; dataset cifar100 needs the folder that holds {FOLDER}/")
    root = Path(root)
    folder = root if root.name == FOLDER else root / FOLDER
    expected = f"{folder}/{{train,test,meta}} (CIFAR-100 python version; {_SOURCE})"
    if not folder.is_dir():
        raise DatasetLayoutError(f"CIFAR-100 folder not found: expected {expected}")
    missing = [name for name in ("train", "test", "meta") if not (folder / name).is_file()]
    if missing:
        raise DatasetLayoutError(f"CIFAR-100 folder {folder} lacks {', '.join(missing)}: expected {expected}")
    return folder


# What the official files reference: numpy's array reconstruction (numpy 1 and 2 module names).
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor"),
                    ("_codecs", "encode")}  # bytes as protocol 2 writes them from Python 3


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-100 file holds only data")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        with path.open("rb") as handle:
            content = _DataOnlyUnpickler(handle, encoding="bytes").load()  # the files were written by Python 2
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a CIFAR file"
        raise ValueError(f"{path} is not a CIFAR-100 python pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}, expected a dict with b'data' and b'fine_labels'")
    # Tolerate re-saved files with str keys; the originals have bytes keys.
    return {key.encode() if isinstance(key, str) else key: value for key, value in content.items()}


def _field(content: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key not in content:
        found = ", ".join(repr(k) for k in content) or "nothing"
        raise ValueError(f"{path} has no {key!r} entry (found {found}); expected the CIFAR-100 python version")
    return content[key]


def read_class_names(root: Path | None) -> tuple[str, ...]:
    folder = cifar100_folder(root)
    names = _field(_unpickle(folder / "meta"), b"fine_label_names", folder / "meta")
    decoded = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(decoded) != NUM_CLASSES:
        raise ValueError(f"{folder / 'meta'} lists {len(decoded)} fine label names, expected {NUM_CLASSES}")
    return decoded


def read_split(root: Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x 32 x 32 x 3 RGB images, int64 N labels) of ``split`` ("train" or "val")."""
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; valid splits are {sorted(FILES)}")
    path = cifar100_folder(root) / FILES[split]
    content = _unpickle(path)
    data = np.asarray(_field(content, b"data", path))
    labels = np.asarray(_field(content, b"fine_labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise ValueError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape[0]} fine labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{path}: fine labels outside 0..{NUM_CLASSES - 1}")
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


class Cifar100(Dataset):
    """One split held in memory (150 MB for train) as (float CHW tensor, int64 label) samples."""

    def __init__(self, root: Path | None, split: str, transform: Callable) -> None:
        self.images, self.labels = read_split(root, split)
        self.classes = read_class_names(root)
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(image=self.images[i])["image"]
        return image.float(), torch.tensor(int(self.labels[i]), dtype=torch.long)
