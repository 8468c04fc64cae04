"""ASPP, the DeepLabV3 head and the DeepLabV3+ decoder.

Each head maps backbone features to ``(logits at the head's stride, decoder feature)``. The
decoder feature is the last 3x3 conv's BatchNorm output *before* its ReLU: that is the map TaT
distils (docs/METHODS.md section 1), and the ReLU would throw away the negative half of its signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias: BN has one) + BN, no activation, so the pre-ReLU map can be tapped."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def separable_conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """The DeepLabV3+ paper's separable conv as its official code builds it: depthwise (atrous)
    conv-BN-ReLU, then pointwise conv-BN, no activation; about 1/9 of a dense 3x3's multiply-adds
    for wide layers."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation, groups=in_channels,
                  bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        *conv_bn(in_channels, out_channels, 1),
    )


def spatial_conv_bn(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                    separable: bool = False) -> nn.Sequential:
    """A kxk conv + BN, dense or depthwise-separable; 1x1 convs are the same either way."""
    if separable and kernel_size > 1:
        return separable_conv_bn(in_channels, out_channels, kernel_size, dilation)
    return conv_bn(in_channels, out_channels, kernel_size, dilation)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 separable: bool = False) -> nn.Sequential:
    return nn.Sequential(*spatial_conv_bn(in_channels, out_channels, kernel_size, dilation, separable),
                         nn.ReLU(inplace=True))


class ImagePooling(nn.Module):
    """ASPP's global branch: average pool -> 1x1 conv-BN-ReLU -> back to the map's size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.project(self.pool(x))
        # Bilinear upsampling of a 1x1 map is a broadcast; expand says so and exports as one
        # Expand node instead of a Resize whose scales depend on the dynamic input size.
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling, then a 1x1 projection."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, int, int], dropout: float,
                 separable: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels, 1)]
            + [conv_bn_relu(in_channels, channels, 3, dilation=rate, separable=separable) for rate in rates]
            + [ImagePooling(in_channels, channels)]
        )
        self.project = nn.Sequential(*conv_bn_relu(len(self.branches) * channels, channels, 1), nn.Dropout(dropout))
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP -> 3x3 conv-BN (decoder feature) -> ReLU -> 1x1 classifier, all at the output stride."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        aspp_channels: int = 256,
        aspp_rates: tuple[int, int, int] = (6, 12, 18),
        decoder_channels: int = 256,
        dropout: float = 0.1,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, aspp_channels, aspp_rates, dropout, separable)
        self.fuse = spatial_conv_bn(aspp_channels, decoder_channels, 3, separable=separable)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.decoder_channels = decoder_channels
        self.decoder_stride_source = "stage4"  # the decoder feature has the stride of this input

    def forward(self, high: Tensor, low: Tensor) -> tuple[Tensor, Tensor]:
        """``low`` (the stride-4 map) is unused; the signature matches DeepLabV3PlusHead."""
        feature = self.fuse(self.aspp(high))
        # Not in place: `feature` is handed out for distillation and must stay pre-ReLU.
        return self.classifier(F.relu(feature)), feature


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deep map, fused with a projected stride-4 map by two 3x3 convs, then a classifier."""

    def __init__(
        self,
        in_channels: int,
        low_level_in_channels: int,
        num_classes: int,
        aspp_channels: int = 256,
        aspp_rates: tuple[int, int, int] = (6, 12, 18),
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        dropout: float = 0.1,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, aspp_channels, aspp_rates, dropout, separable)
        # 48 channels keeps the many low-level channels from outweighing the ASPP context.
        self.low_level = conv_bn_relu(low_level_in_channels, low_level_channels, 1)
        self.fuse1 = conv_bn_relu(aspp_channels + low_level_channels, decoder_channels, 3, separable=separable)
        self.fuse2 = spatial_conv_bn(decoder_channels, decoder_channels, 3, separable=separable)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.decoder_channels = decoder_channels
        self.decoder_stride_source = "stage1"

    def forward(self, high: Tensor, low: Tensor) -> tuple[Tensor, Tensor]:
        low = self.low_level(low)
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        feature = self.fuse2(self.fuse1(torch.cat([context, low], dim=1)))
        # Not in place: `feature` is handed out for distillation and must stay pre-ReLU.
        return self.classifier(F.relu(feature)), feature
