"""Exported routes of timm anchors rebuild alone: structure-only models on the meta device, then the route's weights."""

from __future__ import annotations

import pytest
import torch

import stitchframe
from stitchframe import AnchorSpec

_VIT = {"patch_size": 8, "depth": 4, "num_heads": 3}
_SWIN = {"depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 2}

#: family -> the two anchors (timm name, options) of a tiny SN-Net
FAMILIES = {
    "vit": [("deit_tiny_patch16_224", {**_VIT, "embed_dim": 48}),
            ("deit_small_patch16_224", {**_VIT, "embed_dim": 96})],
    "swin": [("swin_tiny_patch4_window7_224", {**_SWIN, "embed_dim": 16}),
             ("swin_small_patch4_window7_224", {**_SWIN, "embed_dim": 32})],
    "resnet": [("resnet18", {}), ("resnet50", {})],
    "efficientnet": [("tf_efficientnet_lite0", {}), ("tf_efficientnet_lite1", {})],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_stitched_route_reloads_alone_bit_for_bit(family, timm_regs, tmp_path):
    size = 64 if family == "efficientnet" else 32
    spec = stitchframe.parse_spec({
        "anchors": [{"source": f"timm:{name}", "options": {"img_size": size, "num_classes": 10, "model_kwargs": kw}}
                    for name, kw in FAMILIES[family]],
        "stitch": {"space": "snnet"},
    })
    net = stitchframe.assemble(spec, timm_regs).eval()
    rid = max((i for i, r in enumerate(net.routes) if r.links), key=lambda i: net.routes[i].segments[0].end)
    res = stitchframe.export_route(net, route=rid, dest=tmp_path / "r.safetensors", registries=timm_regs)
    module = stitchframe.load_route(res.description, timm_regs)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(module(x), net.forward_route(x, rid))


def test_structure_only_ignores_pretrained_and_weight_files(timm_regs):
    spec = AnchorSpec(source="timm:resnet18", options={"pretrained": True})  # the Hub is unreachable in tests
    anchor = stitchframe.load_anchor(spec, timm_regs, structure_only=True)
    assert anchor.depth == 8 and all(p.is_meta for p in anchor.parameters())
    missing = AnchorSpec(source="timm:resnet18", options={"weights": "/no/such/file.safetensors"})
    assert all(p.is_meta for p in stitchframe.load_anchor(missing, timm_regs, structure_only=True).parameters())
