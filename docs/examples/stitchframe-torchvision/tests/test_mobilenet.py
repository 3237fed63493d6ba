"""Tutorial 1: the torchvision adapter."""

from __future__ import annotations

# --8<-- [start:check_anchor_setup]
import pytest
import torch
from stitchframe_torchvision import MODELS, MobileNetOptions, build_model, mobilenet, mobilenet_anchor

import stitchframe
from stitchframe.testing import check_anchor

SMALL = MobileNetOptions(img_size=64)  # MobileNetV3 works at any size from 32 up; small is fast
# --8<-- [end:check_anchor_setup]


# --8<-- [start:check_anchor]
@pytest.mark.parametrize("identifier", MODELS)
def test_anchor_conforms(identifier):
    model = build_model(identifier, SMALL)
    anchor = mobilenet_anchor(model, identifier, SMALL)
    check_anchor(anchor, model=model, inputs=torch.randn(2, 3, 64, 64))
# --8<-- [end:check_anchor]


def test_stages_follow_the_grid(family):
    for anchor in family:
        graph = anchor.graph
        grids = [graph.spec_at(p).grid for p in graph.positions()]
        for p in range(1, len(grids)):
            assert (graph.stage_at(p) > graph.stage_at(p - 1)) == (grids[p] != grids[p - 1])
    small, large = family
    assert small.graph.spec_at(1).grid == (16, 16) and small.graph.stage_at(1) == 1
    assert large.graph.spec_at(1).grid == (32, 32) and large.graph.stage_at(1) == 0


def test_width_mult_and_classes():
    options = MobileNetOptions(img_size=32, width_mult=0.5, num_classes=7)
    anchor = mobilenet.load_mobilenet("mobilenet_v3_small", options).eval()
    assert anchor.graph.spec_at(1).channels == 8
    assert anchor(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_preprocess_from_torchvision_weights():
    # transforms() needs no download; only building the model with weights does
    pre = mobilenet._preprocess("mobilenet_v3_large", MobileNetOptions(weights="DEFAULT"))
    assert pre.interpolation == "bilinear"
    assert pre.crop_pct == pytest.approx(224 / 232)
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.parametrize(
    ("identifier", "options", "message"),
    [
        ("resnet18", MobileNetOptions(), "unknown model 'resnet18'; supported: mobilenet_v3_small, mobilenet_v3_large"),
        ("mobilenet_v3_small", MobileNetOptions(weights="V9"), "has no weights 'V9'; choose one of IMAGENET1K_V1"),
        ("mobilenet_v3_small", MobileNetOptions(weights="DEFAULT", num_classes=10), "need num_classes: 1000"),
    ],
)
def test_mistakes_are_spec_errors(identifier, options, message):
    with pytest.raises(stitchframe.SpecError, match=message):
        build_model(identifier, options)


def test_validate_rejects_an_unknown_model_without_building_it(tmp_path):
    """The adapter's identifier check runs at validate: the error names the spec field and the models."""
    spec = stitchframe.parse_spec({"anchors": ["torchvision:mobilenet_v3_small", "torchvision:mobilenet_v9"]})
    with pytest.raises(stitchframe.UnknownNameError, match=r"anchors\[1\] \('torchvision:mobilenet_v9'\): "
                                                           r"torchvision adapter: unknown model 'mobilenet_v9'"):
        stitchframe.validate_spec(spec)


# --8<-- [start:structure_only]
def test_structure_only_skips_the_pretrained_download():
    options = MobileNetOptions(img_size=64, weights="DEFAULT")  # a download, were the weights loaded
    with torch.device("meta"):  # how stitchframe.load_anchor(..., structure_only=True) calls it
        anchor = mobilenet.load_mobilenet("mobilenet_v3_small", options, structure_only=True)
    full = mobilenet.load_mobilenet("mobilenet_v3_small", MobileNetOptions(img_size=64))
    assert all(p.is_meta for p in anchor.parameters())
    assert {k: v.shape for k, v in anchor.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}
# --8<-- [end:structure_only]
