"""Route counts of real architectures (random weights) under the built-in stitch spaces.

Counts, documented in the README:

=====================  ======  =======  =====================
family                 snnet   snnet2   blocks
=====================  ======  =======  =====================
DeiT-Ti/S/B            71      267      12 / 12 / 12
Swin-T/S/B             87      660      12 / 24 / 24
ResNet-18/50           17      64       8 / 16
EfficientNet-Lite0/1/2 87      740      16 / 21 / 21
=====================  ======  =======  =====================

``snnet`` with kernel 2, stride 1 (nearest neighbours in FLOPs order, one
layer per window); both spaces stitch only between cut points on the same
grid.  Counts do not depend on the input size (ViT patch grids; CNN/Swin
grids scale together), so small inputs keep the tests fast, and so does
``weight_init: skip`` for the transformers (timm's slow truncated-normal
initialisation is not needed to count routes).
"""

from __future__ import annotations

import pytest

import stitchframe

SKIP_INIT = {"weight_init": "skip"}

#: family -> (timm names, create_model kwargs, snnet routes, snnet2 routes)
FAMILIES = {
    "deit": (["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"], SKIP_INIT, 71, 267),
    "swin": (
        ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"],
        SKIP_INIT,
        87,
        660,
    ),
    "resnet": (["resnet18", "resnet50"], {}, 17, 64),
    "lite": (["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"], {}, 87, 740),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, load):
    names, kwargs, snnet, snnet2 = FAMILIES[request.param]
    anchors = [load(f"timm:{n}", img_size=32, model_kwargs=kwargs) for n in names]
    return anchors, snnet, snnet2


def test_route_counts(family, timm_regs):
    anchors, snnet, snnet2 = family
    net = stitchframe.build_snnet(
        anchors, space="snnet", space_options={"kernel": 2, "stride": 1}, registries=timm_regs
    )
    assert len(net.routes) == snnet
    assert sum(r.is_anchor for r in net.routes) == len(anchors)
    for route in net.routes:
        for src, p, dst, q, _link in route.stitch_points():
            assert net.anchors[src].graph.spec_at(p).grid == net.anchors[dst].graph.spec_at(q).grid
    assert [r.flops for r in net.routes if r.is_anchor] == sorted(a.graph.flops for a in anchors)
    net2 = stitchframe.build_snnet(anchors, space="snnet2", registries=timm_regs)
    assert len(net2.routes) == snnet2
