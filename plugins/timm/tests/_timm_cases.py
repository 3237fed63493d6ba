"""Tiny, randomly initialised timm models, one per family variant, shared by the tests.

Every model is built once per session from a fixed seed (``functools.cache``),
put in eval mode, and cut into an anchor with :func:`stitchframe_timm.timm_anchor`;
the anchor shares the model's parameters, so tests compare it with
``model(x)`` directly.  Tests must not change the cached models' weights.
"""

from __future__ import annotations

import functools

import timm
import torch
from stitchframe_timm import timm_anchor
from torch import nn

from stitchframe import Anchor

_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4, "num_heads": 3}

#: case id -> (timm model name, create_model kwargs, input size)
CASES: dict[str, tuple[str, dict, int]] = {
    "deit": ("deit_tiny_patch16_224", _VIT, 32),
    "deit_wide": ("deit_small_patch16_224", {**_VIT, "embed_dim": 96}, 32),
    "deit3": ("deit3_small_patch16_224", _VIT, 32),
    "vit_reg": ("vit_small_patch16_224", {**_VIT, "reg_tokens": 2}, 32),
    "vit_gap_reg": ("vit_base_patch16_reg4_gap_256", _VIT, 32),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", _VIT, 32),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 32, "embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 2},
        32,
    ),
    "resnet18": ("resnet18", {}, 32),
    "resnet50": ("resnet50", {}, 32),
    "efficientnet_lite0": ("tf_efficientnet_lite0", {}, 64),
}

#: (prefix tokens, layout) each case must have.
EXPECTED = {
    "deit": (1, "tokens"),
    "deit_wide": (1, "tokens"),
    "deit3": (1, "tokens"),
    "vit_reg": (3, "tokens"),
    "vit_gap_reg": (4, "tokens"),
    "deit_distilled": (2, "tokens"),
    "swin": (0, "nhwc"),
    "resnet18": (0, "map"),
    "resnet50": (0, "map"),
    "efficientnet_lite0": (0, "map"),
}


def model(case: str, seed: int = 0) -> nn.Module:
    """The cached tiny timm model of a case (eval mode)."""
    return _model(case, seed)


def anchor(case: str, seed: int = 0) -> Anchor:
    """The cached anchor of a case (sharing :func:`model`'s parameters)."""
    return _anchor(case, seed)


@functools.cache
def _model(case: str, seed: int) -> nn.Module:
    name, kwargs, _ = CASES[case]
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()


@functools.cache
def _anchor(case: str, seed: int) -> Anchor:
    size = CASES[case][2]
    return timm_anchor(_model(case, seed), name=f"{case}_{seed}", source=f"timm:{CASES[case][0]}", img_size=size)


def images(case: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    """A batch of random images at the case's input size."""
    size = CASES[case][2]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
