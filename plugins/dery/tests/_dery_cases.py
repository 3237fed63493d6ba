"""Shared settings and tiny timm zoo of the stitchframe-dery tests."""

from __future__ import annotations

import functools

import timm
import torch
from stitchframe_timm import timm_anchor

from stitchframe import Anchor

#: Small, fast settings for the dery space on the tiny zoos.
FAST = {"stages": 3, "probe_batches": 2, "probe_samples": 16, "score_samples": 8}

#: name -> (timm model, create_model kwargs): a ViT, a Swin and a ResNet at 32x32, randomly initialised.
TIMM_ZOO = {
    "deit": ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4, "num_heads": 3}),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 32, "embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 2},
    ),
    "resnet": ("resnet18", {}),
}


@functools.cache
def timm_zoo() -> tuple[Anchor, ...]:
    """The tiny timm zoo as anchors (eval mode, 10 classes, 32x32 inputs); built once."""
    out = []
    for i, (name, (model, kwargs)) in enumerate(TIMM_ZOO.items()):
        torch.manual_seed(i)
        net = timm.create_model(model, pretrained=False, num_classes=10, **kwargs).eval()
        out.append(timm_anchor(net, name=name, source=f"timm:{model}", img_size=32))
    return tuple(out)


def images(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random images of ``size`` x ``size``."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
