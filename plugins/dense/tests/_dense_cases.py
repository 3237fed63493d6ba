"""Test helpers of stitchframe-dense: tiny timm ViTs and a tiny pure-torch CNN as anchors."""

from __future__ import annotations

import torch
from torch import nn

import stitchframe
from stitchframe import AnchorSpec

PREPROCESS = stitchframe.Preprocess(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def vit(regs, dim: int, seed: int, depth: int = 4) -> stitchframe.Anchor:
    """A timm ViT for 32x32 inputs, 4x4 patches (an 8x8 token grid), a class token and 4 classes."""
    torch.manual_seed(seed)
    options = {
        "img_size": 32,
        "num_classes": 4,
        "model_kwargs": {"patch_size": 4, "embed_dim": dim, "depth": depth, "num_heads": 2},
    }
    return stitchframe.load_anchor(
        AnchorSpec(source="timm:vit_tiny_patch16_224", name=f"vit{dim}", options=options), regs
    )


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _PoolHead(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def cnn(width: int = 16, seed: int = 0) -> stitchframe.Anchor:
    """Stem at stride 2, then blocks at strides 4, 4, 8, 8 (feature maps, two stages)."""
    torch.manual_seed(seed)
    stem = _ConvBlock(3, width, 2)
    blocks = [
        _ConvBlock(width, width, 2),
        _ConvBlock(width, width, 1),
        _ConvBlock(width, 2 * width, 2),
        _ConvBlock(2 * width, 2 * width, 1),
    ]
    return stitchframe.Anchor(
        f"cnn{width}",
        stem=stem,
        blocks=blocks,
        head=_PoolHead(2 * width, 4),
        layout="map",
        stages=[0, 1, 1, 2, 2],
        example_inputs=torch.randn(1, 3, 32, 32),
        preprocess=PREPROCESS,
        family="tiny_cnn",
    ).eval()
