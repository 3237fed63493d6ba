"""Swin Transformer (timm's ``SwinTransformer``: ``swin_tiny/small/base/large_*``).

Cut: the stem is ``patch_embed`` (its output is ``[B, H, W, C]``, the
layout timm's Swin blocks use, so activations are ``nhwc``); the blocks are
every ``SwinTransformerBlock`` of every stage in order; the final norm is
``model.norm`` and the head ``model.head`` (average pooling + classifier).

Patch merging: timm runs a stage's ``PatchMerging`` at the *start* of the
stage (stages 1..3).  The adapter folds it into the stage's first block
(:class:`MergeThenBlock`), so every cut point lies on one grid, the cut at
the end of stage ``i`` is exactly what ``forward_intermediates`` returns
for stage ``i``, and a stitch never lands between a merge and its stage.
Stage ``i``'s blocks (and their outputs) carry stage index ``i``.
"""

from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from .family import Cut, Family

__all__ = ["FAMILY", "MergeThenBlock"]


class MergeThenBlock(nn.Module):
    """A stage's patch merging followed by its first block.

    Args:
        downsample: The stage's ``PatchMerging``.
        block: The stage's first ``SwinTransformerBlock``.
    """

    def __init__(self, downsample: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.downsample = downsample
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.downsample(x))


def cut(model: SwinTransformer) -> Cut:
    """Cut a timm Swin Transformer into stem, blocks (merges folded in), final norm and head."""
    blocks: list[nn.Module] = []
    stages = [0]
    for i, stage in enumerate(model.layers):
        for j, blk in enumerate(stage.blocks):
            if j == 0 and not isinstance(stage.downsample, nn.Identity):
                blk = MergeThenBlock(stage.downsample, blk)
            blocks.append(blk)
            stages.append(i)
    return Cut(stem=model.patch_embed, blocks=blocks, head=model.head, norm=model.norm, layout="nhwc", stages=stages)


FAMILY = Family(
    name="swin_transformer",
    describe="SwinTransformer (swin_*)",
    claims=lambda m: type(m) is SwinTransformer,
    cut=cut,
)
