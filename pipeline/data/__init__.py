"""Datasets: the embedded synthetic benchmark and readers of real datasets in their on-disk formats.

``build_dataset`` is a small dispatch on ``DataConfig.dataset``; each dataset lives in its own
module, and its entry here (a builder, an info function and a fingerprint function) is registered
in :data:`DATASETS` under the name configs use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pipeline.config import DataConfig
from pipeline.registry import Registry


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
    return SyntheticSegmentation(split, size, cfg.image_size, cfg.seed, transform, max_rotation=cfg.shape_rotation)


def _synthetic_identity(cfg: DataConfig) -> dict[str, Any]:
    from pipeline.data.synthetic import CLASS_NAMES, GENERATOR_VERSION

    return {
        "generator_version": GENERATOR_VERSION,
        "classes": list(CLASS_NAMES),
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "train_size": cfg.train_size,
        "val_size": cfg.val_size,
        "shape_rotation": cfg.shape_rotation,
    }


# -------------------------------------------------------------------- on-disk segmentation
# Each reader module exposes CLASS_NAMES (or class_names for the folder), DEFAULT_SPLITS and build().
_READERS = {"voc": "pipeline.data.voc", "cocostuff10k": "pipeline.data.cocostuff",
            "cityscapes": "pipeline.data.cityscapes", "folder": "pipeline.data.folder"}


def _reader(cfg: DataConfig) -> Any:
    import importlib

    return importlib.import_module(_READERS[cfg.dataset])


def split_name(cfg: DataConfig, split: str) -> str:
    """The dataset's own name for our "train"/"val" split (data.train_split / data.val_split or its default)."""
    chosen = cfg.train_split if split == "train" else cfg.val_split
    return chosen or _reader(cfg).DEFAULT_SPLITS[split]


def _files_info(cfg: DataConfig) -> DatasetInfo:
    from pipeline.data.transforms import MEAN, STD

    reader = _reader(cfg)
    names = reader.class_names(cfg.root, cfg.class_names_file) if cfg.dataset == "folder" else reader.CLASS_NAMES
    return DatasetInfo(len(names), tuple(names), MEAN, STD, 255)


def _files_build(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    from pipeline.data.transforms import eval_transform, train_transform

    transform = train_transform(cfg.augment, cfg.image_size) if augment else eval_transform(cfg.val_max_side)
    reader, name = _reader(cfg), split_name(cfg, split)
    if cfg.dataset == "folder":
        return reader.build(cfg.root, name, cfg.class_names_file, transform)
    return reader.build(cfg.root, name, transform)


def _files_identity(cfg: DataConfig) -> dict[str, Any]:
    """The root, the class list and the sample ids of both splits (not the pixels: too slow to hash)."""
    identity: dict[str, Any] = {"root": str(cfg.root), "classes": list(_files_info(cfg).class_names),
                                "image_size": cfg.image_size, "val_max_side": cfg.val_max_side}
    for split in ("train", "val"):
        ids = _files_build(cfg, split, augment=False).ids()
        identity[split] = {"name": split_name(cfg, split), "count": len(ids),
                           "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    return identity


# ------------------------------------------------------------------------- classification
# Classification targets are class ids 0..K-1 with no ignore value: -100 is cross-entropy's
# default and never a class (255 is one of ImageNet's 1000 classes).
CLASSIFICATION_IGNORE_INDEX = -100


def _classification_info(names: tuple[str, ...]) -> DatasetInfo:
    from pipeline.data.transforms import MEAN, STD

    return DatasetInfo(len(names), names, MEAN, STD, CLASSIFICATION_IGNORE_INDEX)


def _synthetic_classification_build(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    from pipeline.data.classification import classification_eval_transform, classification_train_transform
    from pipeline.data.synthetic_classification import SyntheticClassification

    size = {"train": cfg.train_size, "val": cfg.val_size}[split]
    transform = (classification_train_transform(cfg.augment, cfg.image_size, "fixed") if augment
                 else classification_eval_transform(cfg.image_size, "fixed"))
    return SyntheticClassification(split, size, cfg.image_size, cfg.seed, transform,
                                   max_rotation=cfg.shape_rotation)


def _synthetic_classification_identity(cfg: DataConfig) -> dict[str, Any]:
    from pipeline.data import synthetic_classification as sc

    return {"generator_version": sc.GENERATOR_VERSION, "classes": list(sc.CLASS_NAMES), "seed": cfg.seed,
            "image_size": cfg.image_size, "train_size": cfg.train_size, "val_size": cfg.val_size,
            "shape_rotation": cfg.shape_rotation}


def _cifar100_build(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    from pipeline.data.cifar100 import IMAGE_SIZE, Cifar100
    from pipeline.data.classification import classification_eval_transform, classification_train_transform

    transform = (classification_train_transform(cfg.augment, cfg.image_size, "fixed") if augment
                 else classification_eval_transform(cfg.image_size, "fixed", stored_size=IMAGE_SIZE))
    return Cifar100(cfg.root, split, transform)


def _cifar100_identity(cfg: DataConfig) -> dict[str, Any]:
    from pipeline.data.cifar100 import cifar100_folder

    folder = cifar100_folder(cfg.root)
    return {"root": str(folder.resolve()), "bytes": {n: (folder / n).stat().st_size for n in ("train", "test")},
            "image_size": cfg.image_size}


def _image_folder_build(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    from pipeline.data.classification import classification_eval_transform, classification_train_transform
    from pipeline.data.image_folder import ImageFolderClassification

    transform = (classification_train_transform(cfg.augment, cfg.image_size, "imagenet") if augment
                 else classification_eval_transform(cfg.image_size, "imagenet"))
    return ImageFolderClassification(cfg.root, split, transform)


def _image_folder_identity(cfg: DataConfig) -> dict[str, Any]:
    from pipeline.data.image_folder import read_class_names

    return {"root": str(cfg.root.resolve()) if cfg.root else None, "classes": list(read_class_names(cfg.root)),
            "image_size": cfg.image_size}


def _cifar100_info(cfg: DataConfig) -> DatasetInfo:
    from pipeline.data.cifar100 import read_class_names

    return _classification_info(read_class_names(cfg.root))


def _image_folder_info(cfg: DataConfig) -> DatasetInfo:
    from pipeline.data.image_folder import read_class_names

    return _classification_info(read_class_names(cfg.root))


def _synthetic_classification_info(cfg: DataConfig) -> DatasetInfo:
    from pipeline.data.synthetic_classification import CLASS_NAMES

    return _classification_info(CLASS_NAMES)


@dataclass(frozen=True)
class _Entry:
    info: Callable[[DataConfig], DatasetInfo]
    build: Callable[[DataConfig, str, bool], Dataset]
    # Everything that defines the data (not augmentation or loader settings).
    identity: Callable[[DataConfig], dict[str, Any]]
    task: Literal["segmentation", "classification"] = "segmentation"


DATASETS: Registry[_Entry] = Registry("dataset")
DATASETS.register("synthetic", _Entry(_synthetic_info, _synthetic_build, _synthetic_identity))
for _name in _READERS:
    DATASETS.register(_name, _Entry(_files_info, _files_build, _files_identity))
DATASETS.register("synthetic_classification", _Entry(_synthetic_classification_info, _synthetic_classification_build,
                                                      _synthetic_classification_identity, task="classification"))
DATASETS.register("cifar100", _Entry(_cifar100_info, _cifar100_build, _cifar100_identity, task="classification"))
DATASETS.register("image_folder", _Entry(_image_folder_info, _image_folder_build, _image_folder_identity,
                                         task="classification"))


def dataset_task(name: str) -> str:
    """"segmentation" or "classification": what the dataset's targets are."""
    return DATASETS.get(name).task


def _entry(cfg: DataConfig) -> _Entry:
    return DATASETS.get(cfg.dataset)


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


def segmentation_collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack (image, mask) pairs, padding smaller ones at the bottom/right to the batch's largest size:
    images with 0 (the normalised mean colour), masks with the ignore label, so padding never counts."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], height, width, dtype=batch[0][0].dtype)
    masks = torch.full((len(batch), height, width), 255, dtype=batch[0][1].dtype)
    for index, (image, mask) in enumerate(batch):
        images[index, :, : image.shape[-2], : image.shape[-1]] = image
        masks[index, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks


__all__ = ["DATASETS", "DatasetInfo", "build_dataset", "dataset_fingerprint", "dataset_info",
           "dataset_task", "segmentation_collate", "split_name"]
