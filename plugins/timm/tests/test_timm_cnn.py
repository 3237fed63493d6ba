"""ResNet, EfficientNet and Swin: how they are cut into blocks and stages."""

from __future__ import annotations

import pytest
import timm
import torch
from _timm_cases import anchor, images, model
from stitchframe_timm import timm_anchor
from stitchframe_timm.swin import MergeThenBlock


def test_resnet_blocks_are_every_residual_block():
    for case, per_layer in (("resnet18", (2, 2, 2, 2)), ("resnet50", (3, 4, 6, 3))):
        m, a = model(case), anchor(case)
        layers = [m.layer1, m.layer2, m.layer3, m.layer4]
        assert [len(layer) for layer in layers] == list(per_layer)
        assert list(a.blocks) == [blk for layer in layers for blk in layer]
        assert a.stages == [0] + [i for i, n in enumerate(per_layer) for _ in range(n)]
        assert a.norm is None
        assert a.graph.blocks[0].path == "layer1.0"
        assert a.graph.stem.path == "conv1+bn1+act1+maxpool"
        assert a.graph.head.path == "global_pool+fc"


@pytest.mark.parametrize(
    ("name", "counts", "widths"),
    [
        ("tf_efficientnet_lite0", [1, 2, 2, 3, 3, 4, 1], [16, 24, 40, 112, 320]),
        ("tf_efficientnet_lite1", [1, 3, 3, 4, 4, 5, 1], [16, 24, 40, 112, 320]),
        ("tf_efficientnet_lite2", [1, 3, 3, 4, 4, 5, 1], [16, 24, 48, 120, 352]),
    ],
)
def test_efficientnet_lite_blocks_and_stages(name, counts, widths):
    """Every block of every stage is a block; resolution levels end at the Lite stage widths."""
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False)
    a = timm_anchor(m, name="lite", img_size=32)
    assert [len(stage) for stage in m.blocks] == counts
    assert a.depth == sum(counts)
    assert list(a.blocks) == [blk for stage in m.blocks for blk in stage]
    g = a.graph
    ends = [max(p for p in g.positions() if g.stage_at(p) == s) for s in range(5)]
    assert [g.spec_at(p).channels for p in ends] == widths
    assert [g.spec_at(p).grid for p in ends] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert a.head.conv_head is m.conv_head and a.head.bn2 is m.bn2 and a.head.classifier is m.classifier
    assert a.graph.head.path == "conv_head+bn2+global_pool+classifier"


def test_swin_merges_fold_into_the_first_block_of_a_stage():
    m, a = model("swin"), anchor("swin")
    assert a.depth == sum(len(stage.blocks) for stage in m.layers) == 8
    assert a.stages == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    for i, stage in enumerate(m.layers):
        first = a.blocks[2 * i]
        if i == 0:
            assert first is stage.blocks[0]
        else:
            assert isinstance(first, MergeThenBlock)
            assert first.downsample is stage.downsample and first.block is stage.blocks[0]
        assert a.blocks[2 * i + 1] is stage.blocks[1]
    assert a.graph.blocks[2].path == "layers.1.downsample+layers.1.blocks.0"
    assert a.graph.blocks[3].path == "layers.1.blocks.1"
    grids = [a.graph.spec_at(p).grid for p in a.graph.positions()]
    assert grids == [(8, 8)] * 3 + [(4, 4)] * 2 + [(2, 2)] * 2 + [(1, 1)] * 2
    assert a.norm is m.norm and a.head is m.head


def test_swin_shifted_windows_are_exercised():
    """The tiny Swin has shifted-window blocks, so attention masks are part of the exactness test."""
    m = model("swin")
    assert any(max(blk.shift_size) > 0 for stage in m.layers for blk in stage.blocks)
    x = images("swin")
    with torch.no_grad():
        assert torch.equal(anchor("swin")(x), m(x))
