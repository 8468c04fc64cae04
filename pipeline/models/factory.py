"""Build a :class:`SegmentationModel` from a :class:`ModelConfig`."""

from __future__ import annotations

from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.backbones import build_backbone, load_pretrained_backbone
from pipeline.models.heads import DeepLabV3Head, DeepLabV3PlusHead
from pipeline.models.segmentation import SegmentationModel


def build_segmentation_model(cfg: ModelConfig, num_classes: int, neck: nn.Module | None = None) -> SegmentationModel:
    """Teacher or student network; ``cfg.pretrained`` (a local file) is loaded into the backbone.

    A ``neck`` that changes the channel count must say so with an int attribute ``out_channels``;
    otherwise it is assumed to keep the stage4 channels.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone = build_backbone(cfg.backbone, cfg.output_stride, cfg.width_mult)
    if cfg.pretrained is not None:
        load_pretrained_backbone(backbone, cfg.pretrained)
    neck_channels = getattr(neck, "out_channels", None) if neck is not None else None
    if neck_channels is not None and not isinstance(neck_channels, int):
        raise TypeError(f"neck.out_channels must be an int, got {neck_channels!r}")
    high_channels = neck_channels if neck_channels is not None else backbone.out_channels["stage4"]
    head: DeepLabV3Head | DeepLabV3PlusHead
    if cfg.arch == "deeplabv3plus":
        head = DeepLabV3PlusHead(
            high_channels,
            backbone.out_channels["stage1"],
            num_classes,
            aspp_channels=cfg.aspp_channels,
            aspp_rates=cfg.aspp_rates,
            low_level_channels=cfg.low_level_channels,
            decoder_channels=cfg.decoder_channels,
            dropout=cfg.dropout,
            separable=cfg.separable,
        )
    elif cfg.arch == "deeplabv3":
        head = DeepLabV3Head(
            high_channels,
            num_classes,
            aspp_channels=cfg.aspp_channels,
            aspp_rates=cfg.aspp_rates,
            decoder_channels=cfg.decoder_channels,
            dropout=cfg.dropout,
            separable=cfg.separable,
        )
    else:  # the config's Literal already rejects this; kept for callers that bypass it
        raise ValueError(f"unknown arch {cfg.arch!r}; choose deeplabv3plus or deeplabv3")
    return SegmentationModel(backbone, head, num_classes, neck=neck, neck_channels=neck_channels)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not (the stripped student must match this exactly)."""
    return sum(p.numel() for p in model.parameters())
