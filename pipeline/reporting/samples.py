"""Predictions on a few val images for the report's picture grid, from any Predictor."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.config import DataConfig
from pipeline.data import build_dataset, dataset_info
from pipeline.runtime.base import Predictor


def val_samples(data: DataConfig, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(normalised float32 NCHW images, int64 NHW masks) of the first ``count`` val images."""
    dataset = build_dataset(data, "val")
    pairs = [dataset[i] for i in range(min(count, len(dataset)))]
    images = np.stack([image.numpy() for image, _ in pairs]).astype(np.float32)
    masks = np.stack([mask.numpy() for _, mask in pairs])
    return images, masks


def displayable(images: np.ndarray, data: DataConfig) -> list[np.ndarray]:
    """Undo the normalisation: NCHW float -> list of HxWx3 uint8."""
    info = dataset_info(data)
    mean = np.asarray(info.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(info.std, dtype=np.float32)[:, None, None]
    pixels = np.clip((images * std + mean) * 255.0, 0, 255).astype(np.uint8)
    return [picture.transpose(1, 2, 0) for picture in pixels]


def predicted_masks(predictors: Mapping[str, Predictor], images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel class ids (NHW) of each predictor on the same images."""
    return {label: np.argmax(predictor.predict(images), axis=1) for label, predictor in predictors.items()}
