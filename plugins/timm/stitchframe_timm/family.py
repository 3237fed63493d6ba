"""What every family module provides, and helpers they share.

A family module (``vit``, ``swin``, ``resnet``, ``efficientnet``) exposes one
:class:`Family`: a test that claims a timm model by class, and a function
cutting the model into the pieces of a :class:`stitchframe.Anchor`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Cut", "Family", "PooledHead", "block_stride", "resolution_levels"]


@attrs.frozen(kw_only=True)
class Cut:
    """A timm model cut into anchor pieces (the keyword arguments of :class:`stitchframe.Anchor`).

    Attributes:
        stem: Inputs to the first activation.
        blocks: Ordered blocks (stitches go between them).
        head: Last activation to the output.
        norm: Final normalisation before the head (``None``: none).
        layout: Activation layout (``tokens``, ``map``, ``nhwc``).
        prefix: Prefix tokens for ``tokens``.
        grid: Token grid for ``tokens``.
        stages: Stage (resolution level) of the stem output and every block output.
    """

    stem: nn.Module
    blocks: Sequence[nn.Module]
    head: nn.Module
    norm: nn.Module | None
    layout: str
    stages: Sequence[int]
    prefix: int = 0
    grid: tuple[int, int] | None = None

    def anchor_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments for :class:`stitchframe.Anchor`."""
        return attrs.asdict(self, recurse=False)


@attrs.frozen(kw_only=True)
class Family:
    """A model family the adapter can cut.

    Attributes:
        name: Short name recorded as the anchor's ``family``.
        describe: What it covers, for the "unsupported model" message.
        claims: True for models of this family.
        cut: Cuts a claimed model (in its final state) into anchor pieces.
    """

    name: str
    describe: str
    claims: Callable[[nn.Module], bool]
    cut: Callable[[nn.Module], Cut]


def _stride(module: nn.Module) -> int:
    stride = getattr(module, "stride", 1)
    if isinstance(stride, (tuple, list)):
        stride = max(stride)
    return int(stride) if stride else 1


def block_stride(block: nn.Module) -> int:
    """Spatial stride of a CNN block: the largest stride of its convolutions and poolings."""
    pools = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    return max((_stride(m) for m in block.modules() if isinstance(m, pools)), default=1)


def resolution_levels(blocks: Sequence[nn.Module]) -> list[int]:
    """Stage index of the stem output and of every block output: log2 of the stride since the stem.

    A block with stride 2 starts a new level; blocks at one level share a grid.
    """
    levels = [0]
    for blk in blocks:
        levels.append(levels[-1] + round(math.log2(block_stride(blk))))
    return levels


class PooledHead(nn.Module):
    """Global pooling, dropout (``drop_rate``) and classifier, as timm's CNNs' ``forward_head``.

    Args:
        global_pool: The model's ``SelectAdaptivePool2d``.
        classifier: The model's classifier (``fc`` or ``classifier``).
        drop_rate: The model's ``drop_rate``.
        pre: ``(name, module)`` pairs run first, in order (EfficientNet's
            ``conv_head`` and ``bn2``), kept under those names.
    """

    def __init__(
        self,
        global_pool: nn.Module,
        classifier: nn.Module,
        drop_rate: float,
        pre: Sequence[tuple[str, nn.Module]] = (),
    ) -> None:
        super().__init__()
        for name, module in pre:
            self.add_module(name, module)
        self.pre_names = tuple(name for name, _ in pre)
        self.global_pool = global_pool
        self.classifier = classifier
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.pre_names:
            x = getattr(self, name)(x)
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)
