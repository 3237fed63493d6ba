"""StitchedBackbone: the same feature shapes for every route, read where the route runs."""

from __future__ import annotations

import pytest
import torch
from _dense_cases import cnn, vit
from stitchframe_dense import ShapesSegmentation, StitchedBackbone, level_positions

import stitchframe
from stitchframe import Route, SpecError


@pytest.fixture(scope="module")
def vit_net(regs):
    net = stitchframe.build_snnet([vit(regs, 32, 0), vit(regs, 48, 1)], registries=regs)
    data = ShapesSegmentation(32, (32, 32), seed=5)
    stitchframe.calibrate(net, [torch.stack([data[i][0] for i in range(32)])])
    return net


def test_feature_shapes_are_the_same_for_every_route(vit_net):
    backbone = StitchedBackbone(vit_net, out_channels=[16, 24, 32, 40])
    expected = [(2, 16, 8, 8), (2, 24, 4, 4), (2, 32, 2, 2), (2, 40, 1, 1)]
    assert backbone.feature_shapes(2) == expected
    x = torch.randn(2, 3, 32, 32)
    outputs = {}
    for rid in range(len(vit_net.routes)):
        backbone.select(rid)
        feats = backbone(x)
        assert [tuple(f.shape) for f in feats] == expected
        assert all(torch.isfinite(f).all() for f in feats)
        outputs[rid] = feats[-1]
    assert vit_net.selected_id == len(vit_net.routes) - 1  # the SN-Net follows the backbone's selection
    assert not torch.allclose(outputs[0], outputs[1])  # routes really differ


def test_cnn_and_vit_routes_give_the_same_shapes(regs):
    net = stitchframe.build_snnet(
        [cnn(16), vit(regs, 32, 0)], space="cross", space_options={"between": False}, registries=regs
    )
    assert {r.meta["kind"] for r in net.routes} == {"anchor", "up", "down"}
    backbone = StitchedBackbone(net, out_channels=8)
    x = torch.randn(3, 3, 32, 32)
    for rid in range(len(net.routes)):
        backbone.select(rid)
        assert [tuple(f.shape) for f in backbone(x)] == [(3, 8, 8, 8), (3, 8, 4, 4), (3, 8, 2, 2), (3, 8, 1, 1)]


def test_levels_read_the_route_at_depth_fractions():
    route = Route.chain(("a", 0, 3), ("b", 5, 8))  # 6 blocks: a's 1..3 then b's 6..8
    assert level_positions(route, (0.25, 0.5, 0.75, 1.0)) == [(0, "a", 2), (0, "a", 3), (1, "b", 7), (1, "b", 8)]
    assert level_positions(route, (0.01,)) == [(0, "a", 1)]


def test_raw_features_are_the_routes_activations(vit_net):
    """The backbone runs routes as the SN-Net does: its last activation through the end anchor's
    norm and head gives the SN-Net's output for that route."""
    backbone = StitchedBackbone(vit_net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for rid, route in enumerate(vit_net.routes):
            last = backbone.raw_features(x, rid)[-1]
            end = vit_net.anchors[route.segments[-1].anchor]
            torch.testing.assert_close(end.run_head(last), vit_net.forward_route(x, rid))


def test_projections_are_shared_by_routes_through_the_same_cut_point(vit_net):
    backbone = StitchedBackbone(vit_net)
    keys = {
        StitchedBackbone.projection_key(lvl, a, p)
        for plan in backbone.plans.values()
        for lvl, (_, a, p) in enumerate(plan)
    }
    assert set(backbone.projections) == keys
    assert len(keys) < 4 * len(vit_net.routes)


def test_a_subset_of_routes(vit_net):
    backbone = StitchedBackbone(vit_net, routes=[0, "vit48[0:4]"])
    assert backbone.route_ids == (0, 1)
    with pytest.raises(SpecError, match=r"route 3 is not one of the routes it serves \[0, 1\]"):
        backbone.select(3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fractions": (0.5, 0.25)}, r"fractions \[0.5, 0.25\] must be increasing values in \(0, 1\]"),
        ({"fractions": (0.0, 1.0)}, r"must be increasing values in \(0, 1\]"),
        ({"out_channels": [8, 8]}, r"out_channels has 2 values for 4 levels; give one per fraction"),
        ({"strides": [4, 8]}, r"strides has 2 values for 4 levels"),
    ],
)
def test_bad_arguments_are_one_line_errors(vit_net, kwargs, message):
    with pytest.raises(SpecError, match=message):
        StitchedBackbone(vit_net, **kwargs)


def test_text_anchors_are_refused(regs):
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4))
    anchor = stitchframe.Anchor(
        "seq",
        stem=model[0],
        blocks=[model[1]],
        head=model[2],
        layout="sequence",
        example_inputs=torch.randn(1, 5, 8),
        preprocess=stitchframe.Preprocess(modality="text", input_size=None),
    )
    net = stitchframe.build_snnet([anchor], space="anchors", registries=regs)
    with pytest.raises(
        SpecError,
        match=r"seq.blocks\[0\] \(B,5,16\) \(sequence\) cannot become a \(B,64,2,2\) map: .*"
        "dense features need spatial activations",
    ):
        StitchedBackbone(net, input_size=(32, 32), fractions=(1.0,), strides=(16,))


@pytest.mark.gpu
def test_backbone_on_cuda(vit_net):
    import copy

    backbone = StitchedBackbone(copy.deepcopy(vit_net)).cuda()
    feats = backbone(torch.randn(2, 3, 32, 32, device="cuda"))
    assert [f.device.type for f in feats] == ["cuda"] * 4


def test_the_backbone_runs_the_snnets_selected_route_with_its_own_batchnorm_statistics(regs):
    """A loop that selects routes on the SN-Net (the build's training and evaluation) drives the backbone, and
    routes with per-route BatchNorm statistics read their own rows, as SNNet.forward_route does."""
    net = stitchframe.build_snnet(
        [cnn(16), vit(regs, 32, 0)], space="cross", space_options={"between": False}, registries=regs
    )
    data = ShapesSegmentation(32, (32, 32), seed=5)
    batches = [torch.stack([data[i][0] for i in range(j, j + 16)]) for j in (0, 16)]
    stitchframe.calibrate(net, batches)
    stitchframe.recalibrate_route_bn(net, batches)  # stitched routes through the CNN get rows of their own
    backbone = StitchedBackbone(net).eval()
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for rid, route in enumerate(net.routes):
            net.select(rid)
            assert backbone.selected == route
            last = backbone.raw_features(x)[-1]
            end = net.anchors[route.segments[-1].anchor]
            torch.testing.assert_close(end.run_head(last), net.forward_route(x, rid))
    assert net.route_bn.route is None
