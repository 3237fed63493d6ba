"""Tutorial 3: the stagewise stitch space."""

from __future__ import annotations

import pytest
import stitchframe_torchvision
from stitchframe_torchvision import StagewiseOptions, StagewiseSpace
from stitchframe_torchvision.stagewise import inner_positions_by_stage, same_place

import stitchframe
from stitchframe.testing import check_plugin, check_stitch_space


# --8<-- [start:check_stitch_space]
@pytest.mark.parametrize("options", [StagewiseOptions(), StagewiseOptions(both_ways=True, stride=2)])
def test_stagewise_conforms(family, options):
    registries = check_plugin(stitchframe_torchvision)  # to build with the plugin's dwconv layer
    check_stitch_space(StagewiseSpace, family, options, layer="dwconv", registries=registries)
# --8<-- [end:check_stitch_space]


# --8<-- [start:check_builtin_space]
def test_builtin_snnet_space_on_mobilenets(family):
    registries = stitchframe.load_registries()  # built-ins and installed plugins
    snnet = registries.stitch_spaces.get("snnet").obj  # the registered class
    routes = check_stitch_space(snnet, family, snnet.Options(kernel=2, stride=2), registries=registries)
    assert any(not route.is_anchor for route in routes)
# --8<-- [end:check_builtin_space]


def test_stitches_stay_inside_a_stage(family):
    small, large = family
    routes = list(StagewiseSpace().routes(family, lambda *a: True))
    stitched = [r for r in routes if not r.is_anchor]
    assert len(stitched) == small.depth - 1  # one per inner cut point of the smaller anchor
    for route in stitched:
        (src, p, dst, q, _link), = route.stitch_points()
        assert (src, dst) == ("mobilenet_v3_small", "mobilenet_v3_large")
        assert small.graph.stage_at(p) == large.graph.stage_at(q)
        assert small.graph.spec_at(p).grid == large.graph.spec_at(q).grid


def test_both_ways_and_stride(family):
    one_way = list(StagewiseSpace().routes(family, lambda *a: True))
    both = list(StagewiseSpace(StagewiseOptions(both_ways=True)).routes(family, lambda *a: True))
    assert {r.anchors for r in both} == {r.anchors for r in one_way} | {("mobilenet_v3_large", "mobilenet_v3_small")}
    strided = list(StagewiseSpace(StagewiseOptions(stride=2)).routes(family, lambda *a: True))
    assert all(r.segments[0].end % 2 == 0 for r in strided if not r.is_anchor)


def test_same_place():
    assert [same_place(i, 2, 4) for i in range(2)] == [1, 3]
    assert [same_place(i, 4, 2) for i in range(4)] == [0, 0, 1, 1]
    assert same_place(0, 1, 1) == 0


def test_positions_by_stage(family):
    small, _ = family
    groups = inner_positions_by_stage(small)
    assert sorted(p for ps in groups.values() for p in ps) == list(range(1, small.depth))
