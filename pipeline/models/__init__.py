"""Segmentation models (DeepLabV3 / DeepLabV3+) on torchvision backbones with named feature taps."""

from pipeline.models.backbones import load_pretrained_backbone
from pipeline.models.factory import build_segmentation_model, count_parameters
from pipeline.models.segmentation import SegmentationModel

__all__ = ["SegmentationModel", "build_segmentation_model", "count_parameters", "load_pretrained_backbone"]
