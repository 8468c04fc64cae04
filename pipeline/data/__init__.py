"""Datasets: the embedded synthetic benchmark (and, later, real-dataset readers).

``build_dataset`` is a small dispatch on ``DataConfig.dataset``; each dataset lives in its own
module and registers a builder, an info function and a fingerprint function here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch.utils.data import Dataset

from pipeline.config import DataConfig


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ignore_index: int = 255


# ------------------------------------------------------------------------------ synthetic
def _synthetic_info(cfg: DataConfig) -> DatasetInfo:
    from pipeline.data.synthetic import CLASS_NAMES, IGNORE_INDEX
    from pipeline.data.transforms import MEAN, STD

    return DatasetInfo(len(CLASS_NAMES), CLASS_NAMES, MEAN, STD, IGNORE_INDEX)


def _synthetic_build(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    from pipeline.data.synthetic import SyntheticSegmentation
    from pipeline.data.transforms import eval_transform, train_transform

    size = {"train": cfg.train_size, "val": cfg.val_size}[split]
    transform = train_transform(cfg.augment, cfg.image_size) if augment else eval_transform()
    return SyntheticSegmentation(split, size, cfg.image_size, cfg.seed, transform)


def _synthetic_identity(cfg: DataConfig) -> dict[str, Any]:
    from pipeline.data.synthetic import CLASS_NAMES, GENERATOR_VERSION

    return {
        "generator_version": GENERATOR_VERSION,
        "classes": list(CLASS_NAMES),
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "train_size": cfg.train_size,
        "val_size": cfg.val_size,
    }


@dataclass(frozen=True)
class _Entry:
    info: Callable[[DataConfig], DatasetInfo]
    build: Callable[[DataConfig, str, bool], Dataset]
    # Everything that defines the data (not augmentation or loader settings).
    identity: Callable[[DataConfig], dict[str, Any]]


DATASETS: dict[str, _Entry] = {
    "synthetic": _Entry(_synthetic_info, _synthetic_build, _synthetic_identity),
}


def _entry(cfg: DataConfig) -> _Entry:
    entry = DATASETS.get(cfg.dataset)
    if entry is None:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; valid datasets are {sorted(DATASETS)}")
    return entry


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Class names, normalisation and ignore index of the configured dataset."""
    return _entry(cfg).info(cfg)


def build_dataset(cfg: DataConfig, split: Literal["train", "val"], augment: bool | None = None) -> Dataset:
    """The configured dataset's ``split``; ``augment`` defaults to ``split == "train"``."""
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; valid splits are ['train', 'val']")
    entry = _entry(cfg)
    return entry.build(cfg, split, split == "train" if augment is None else augment)


def dataset_fingerprint(cfg: DataConfig) -> str:
    """sha256 hex of everything that defines the data, so gates compare like with like."""
    identity = {"dataset": cfg.dataset, **_entry(cfg).identity(cfg)}
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


__all__ = ["DATASETS", "DatasetInfo", "build_dataset", "dataset_fingerprint", "dataset_info"]
