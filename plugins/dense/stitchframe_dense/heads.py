"""Segmentation heads over a :class:`~stitchframe_dense.StitchedBackbone`'s levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPNLiteHead", "Segmenter"]


def _conv_gn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    groups = next(g for g in (8, 4, 2, 1) if cout % g == 0)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True)
    )


class FPNLiteHead(nn.Module):
    """A light FPN: lateral 1x1 convs, top-down sum, one 3x3 conv per level, fused at the finest level.

    Args:
        in_channels: Channels of every level, finest first (the backbone's ``out_channels``).
        num_classes: Segmentation classes.
        dim: Width of the pyramid.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, dim: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_gn(dim, dim, 3) for _ in in_channels)
        self.fuse = _conv_gn(dim, dim, 3)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[B, num_classes, *size]`` from the levels (finest first)."""
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):  # top-down: coarse to fine
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="bilinear", align_corners=False)
        out = [conv(x) for conv, x in zip(self.smooth, lat)]
        fine = out[0].shape[-2:]
        fused = sum(
            F.interpolate(x, size=fine, mode="bilinear", align_corners=False) if x.shape[-2:] != fine else x
            for x in out
        )
        logits = self.classifier(self.fuse(fused))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Backbone plus head: ``forward(images) -> logits [B, K, H, W]`` for the selected route.

    Args:
        backbone: A :class:`~stitchframe_dense.StitchedBackbone`.
        head: A head taking ``(features, size)``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def select(self, route):
        """Select a route of the backbone (see :meth:`StitchedBackbone.select`)."""
        return self.backbone.select(route)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images), tuple(images.shape[-2:]))
