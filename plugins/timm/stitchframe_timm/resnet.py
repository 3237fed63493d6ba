"""ResNets (timm's ``ResNet``: ``resnet18/34/50/101``, ResNet-D, SE-ResNet, ResNeXt, ...).

Cut: the stem is ``conv1``/``bn1``/``act1``/``maxpool``; the blocks are every
residual block of ``layer1..layer4`` in order; there is no final norm; the
head is global pooling + dropout + ``fc``.  Activations are ``map``
(``[B, C, H, W]``); stage indices are resolution levels (``layerK`` is
stage ``K-1``: its first block's stride starts the level).
"""

from __future__ import annotations

import torch
from timm.models.resnet import ResNet
from torch import nn

from .family import Cut, Family, PooledHead, resolution_levels

__all__ = ["FAMILY", "ResNetStem"]


class ResNetStem(nn.Module):
    """``conv1``, ``bn1``, ``act1``, ``maxpool`` of a timm ResNet."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.conv1 = model.conv1
        self.bn1 = model.bn1
        self.act1 = model.act1
        self.maxpool = model.maxpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))


def cut(model: ResNet) -> Cut:
    """Cut a timm ResNet into stem, every residual block, and head."""
    blocks = [blk for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for blk in layer]
    return Cut(
        stem=ResNetStem(model),
        blocks=blocks,
        head=PooledHead(model.global_pool, model.fc, model.drop_rate),
        norm=None,
        layout="map",
        stages=resolution_levels(blocks),
    )


FAMILY = Family(
    name="resnet",
    describe="ResNet (resnet*, resnext*, seresnet*, ...)",
    claims=lambda m: type(m) is ResNet,
    cut=cut,
)
