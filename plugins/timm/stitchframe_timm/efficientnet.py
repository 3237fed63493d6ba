"""EfficientNets (timm's ``EfficientNet``: ``efficientnet_b*``, ``tf_efficientnet_lite0..4``, MobileNetV2, ...).

Cut: the stem is ``conv_stem`` + ``bn1``; the blocks are every block of
every stage of ``model.blocks`` in order (EfficientNet-Lite0: 1, 2, 2, 3, 3,
4, 1 blocks, 16 in all; Lite1/2: 1, 3, 3, 4, 4, 5, 1, 21 in all); there is
no final norm; the head is ``conv_head`` + ``bn2`` + global pooling +
dropout + ``classifier``.  Activations are ``map``; stage indices are
resolution levels (a block with stride 2 starts a new level).
"""

from __future__ import annotations

import torch
from timm.models.efficientnet import EfficientNet
from torch import nn

from .family import Cut, Family, PooledHead, resolution_levels

__all__ = ["FAMILY", "EfficientNetStem"]


class EfficientNetStem(nn.Module):
    """``conv_stem`` and ``bn1`` (batch norm + activation) of a timm EfficientNet."""

    def __init__(self, model: EfficientNet) -> None:
        super().__init__()
        self.conv_stem = model.conv_stem
        self.bn1 = model.bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv_stem(x))


def cut(model: EfficientNet) -> Cut:
    """Cut a timm EfficientNet into stem, every block of every stage, and head."""
    blocks = [blk for stage in model.blocks for blk in stage]
    return Cut(
        stem=EfficientNetStem(model),
        blocks=blocks,
        head=PooledHead(
            model.global_pool,
            model.classifier,
            model.drop_rate,
            pre=(("conv_head", model.conv_head), ("bn2", model.bn2)),
        ),
        norm=None,
        layout="map",
        stages=resolution_levels(blocks),
    )


FAMILY = Family(
    name="efficientnet",
    describe="EfficientNet (efficientnet_*, tf_efficientnet_*, tf_efficientnet_lite*, mobilenetv2_*)",
    claims=lambda m: type(m) is EfficientNet,
    cut=cut,
)
