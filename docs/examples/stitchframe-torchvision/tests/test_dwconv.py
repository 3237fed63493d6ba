"""Tutorial 2: the dwconv stitching layer."""

from __future__ import annotations

import pytest
import torch
from stitchframe_torchvision import DWConvOptions, DWConvStitch

import stitchframe
from stitchframe.testing import check_stitch_layer

MAP_8 = stitchframe.ActivationSpec(layout="map", channels=8, grid=(6, 6))
MAP_12 = stitchframe.ActivationSpec(layout="map", channels=12, grid=(6, 6))


# --8<-- [start:check_stitch_layer]
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_dwconv_conforms(kernel_size):
    check_stitch_layer(DWConvStitch, MAP_8, MAP_12, DWConvOptions(kernel_size=kernel_size))
# --8<-- [end:check_stitch_layer]


def test_dwconv_on_the_family(family):
    small, large = family
    check_stitch_layer(DWConvStitch, small.graph.spec_at(3), large.graph.spec_at(4))


def test_starts_as_the_least_squares_1x1_conv():
    layer = DWConvStitch(MAP_8, MAP_12)
    x = MAP_8.example(16)
    target = torch.nn.functional.conv2d(x, torch.randn(12, 8, 1, 1)) + 0.5
    layer.fit(x, target)
    torch.testing.assert_close(layer(x), target, atol=1e-4, rtol=1e-4)


def test_refuses_what_it_cannot_join():
    other_grid = stitchframe.ActivationSpec(layout="map", channels=8, grid=(3, 3))
    tokens = stitchframe.ActivationSpec(layout="tokens", channels=8, grid=(6, 6))
    assert "needs equal grids" in DWConvStitch.supports(MAP_8, other_grid)
    assert "joins 'map' layouts only" in DWConvStitch.supports(tokens, MAP_8)
    with pytest.raises(stitchframe.ShapeMismatchError, match="needs equal grids"):
        DWConvStitch(MAP_8, other_grid)


def test_kernel_size_must_be_odd():
    with pytest.raises(ValueError, match="'kernel_size' must be odd, got 4"):
        DWConvOptions(kernel_size=4)
