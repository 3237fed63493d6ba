from __future__ import annotations

from itertools import combinations
from typing import ClassVar

import pytest

import torch
from torch import nn

import stitchframe
from stitchframe import Route, Segment, build_snnet, load_registries, stitch_spaces
from stitchframe.stitch_spaces import SNNet2Space, SNNetSpace, depth_map, paired_windows
from tests import tiny


def _reference_pairs(depth, kernel, stride):
    """The SN-Net reference enumeration, rewritten from its description: ordered pairs per sliding window."""
    cfgs = []
    i = 0
    while i < depth:
        ids = list(range(depth))[i : i + kernel]
        cfgs += [(j, k) for j in ids for k in ids if (j, k) not in cfgs]
        i += stride
    return cfgs


@pytest.mark.parametrize("kernel,stride,count", [(2, 1, 34), (3, 1, 54), (2, 2, 24), (1, 1, 12)])
def test_paired_windows_match_the_reference(kernel, stride, count):
    pairs = [p for _, ps in paired_windows(12, kernel, stride) for p in ps]
    assert pairs == _reference_pairs(12, kernel, stride)
    assert len(pairs) == count


def test_paired_windows_share_ids_per_window():
    windows = paired_windows(12, 2, 1)
    assert len(windows) == 11  # the reference's num_stitches
    assert windows[0] == (0, [(0, 0), (0, 1), (1, 0), (1, 1)])


def test_depth_map():
    assert [depth_map(12, 12, i) for i in range(12)] == list(range(12))
    assert [depth_map(4, 8, i) for i in range(4)] == [1, 3, 5, 7]
    assert [depth_map(8, 4, i) for i in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.fixture(scope="module")
def deit_like():
    """Three depth-12 tiny ViTs standing in for DeiT-Ti/S/B (given out of FLOPs order)."""
    return [tiny.vit_anchor(tiny.tiny_vit(d, depth=12, seed=i), f"v{d}") for i, d in enumerate((48, 32, 64))]


@pytest.fixture(scope="module")
def builtin():
    return load_registries()


def test_snnet_deit_family_gives_71_routes(deit_like, builtin):
    net = build_snnet(deit_like, space="snnet", space_options={"kernel": 2, "stride": 1}, registries=builtin)
    routes = list(net.routes)
    assert len(routes) == 71
    assert [r.describe() for r in routes[:3]] == ["v32[0:12]", "v48[0:12]", "v64[0:12]"]
    pairs = {r.anchors for r in routes if not r.is_anchor}
    assert pairs == {("v32", "v48"), ("v48", "v64")}  # fast to slow, neighbours only
    assert len(net.stitches) == 22  # one shared layer per window per pair, as the reference
    assert "v32[0:1] -> linear -> v48[0:12]" in [r.describe() for r in routes]
    assert "v32[0:12] -> linear -> v48[11:12]" in [r.describe() for r in routes]
    assert len(set(routes)) == 71


def test_snnet_without_sharing_has_one_layer_per_cut_pair(deit_like, builtin):
    net = build_snnet(deit_like, space="snnet", space_options={"share": False}, registries=builtin)
    assert len(net.routes) == 71 and len(net.stitches) == 68


def test_snnet_all_pairs_and_triples_match_reference_counts(deit_like, builtin):
    net = build_snnet(deit_like, space="snnet", space_options={"nearest": False}, registries=builtin)
    cfgs = _reference_pairs(12, 2, 1)
    triples = sum(1 for j1, k1 in cfgs for j2, k2 in cfgs if j2 >= k1)
    assert len(net.routes) == 3 + 3 * len(cfgs) + triples
    three = [r for r in net.routes if len(r.segments) == 3]
    assert len(three) == triples and all(r.anchors == ("v32", "v48", "v64") for r in three)


def test_snnet_kernel_and_stride_options(deit_like, builtin):
    net = build_snnet(deit_like, space="snnet", space_options={"kernel": 3, "stride": 1}, registries=builtin)
    assert len(net.routes) == 3 + 2 * 54


def test_snnet_unequal_depths_use_nearest_relative_depth(builtin):
    short = tiny.vit_anchor(tiny.tiny_vit(32, depth=2, seed=0), "short")
    deep = tiny.vit_anchor(tiny.tiny_vit(48, depth=4, seed=1), "deep")
    net = build_snnet([deep, short], space="snnet", registries=builtin)
    names = [r.describe() for r in net.routes]
    # front block j of `short` maps to `deep` block depth_map(2, 4, k); windows (0,1): pairs (0,0) (0,1) (1,0) (1,1)
    assert names[2:] == [
        "short[0:1] -> linear -> deep[1:4]",
        "short[0:1] -> linear -> deep[3:4]",
        "short[0:2] -> linear -> deep[1:4]",
        "short[0:2] -> linear -> deep[3:4]",
    ]


def test_snnet_cnn_family_stitches_only_equal_grids(cnn_family, builtin):
    net = build_snnet(cnn_family, space="snnet", registries=builtin)
    for r in net.routes:
        for src, p, dst, q, _ in r.stitch_points():
            g1 = net.anchors[src].graph.spec_at(p).grid
            g2 = net.anchors[dst].graph.spec_at(q).grid
            assert g1 == g2
        assert all(link.layer == "conv1x1" for link in r.links)
    loose = build_snnet(cnn_family, space="snnet", space_options={"same_grid": False}, registries=builtin)
    assert len(loose.routes) > len(net.routes)


@pytest.mark.parametrize("space", ["snnet", "snnet2"])
def test_anchors_whose_grids_never_match_get_a_warning_not_silence(space, builtin):
    coarse = tiny.tiny_cnn(8, seed=0)
    fine = tiny.tiny_cnn(16, seed=1)
    fine.stem[0] = nn.Conv2d(3, 16, 3, 1, 1)  # stride 1: every grid of `fine` is twice that of `coarse`
    anchors = [tiny.cnn_anchor(coarse, "coarse"), tiny.cnn_anchor(fine, "fine")]
    with pytest.warns(UserWarning, match=r"No stitch from anchor '(coarse|fine)' into.*same_grid: false") as seen:
        net = build_snnet(anchors, space=space, registries=builtin)
    assert len(seen) == (2 if space == "snnet2" else 1)  # snnet2 stitches both ways
    assert all(r.is_anchor for r in net.routes)
    loose = build_snnet(anchors, space=space, space_options={"same_grid": False}, registries=builtin)
    assert not all(r.is_anchor for r in loose.routes)


def test_snnet2_two_way_route_kinds(vit_family, builtin):
    net = build_snnet(vit_family[:2], space="snnet2", registries=builtin)
    kinds = [r.meta["kind"] for r in net.routes]
    assert kinds.count("anchor") == 2
    assert kinds.count("sl") == 3 and kinds.count("ls") == 3
    assert kinds.count("sls") == 3 and kinds.count("lsl") == 3
    sls = [r for r in net.routes if r.meta["kind"] == "sls"]
    assert all(r.anchors == ("vit32", "vit48", "vit32") for r in sls)
    for r in sls:
        assert r.segments[1].end > r.segments[1].start  # the middle anchor runs at least one block
    only = build_snnet(vit_family[:2], space="snnet2", space_options={"directions": ["ls"]}, registries=builtin)
    assert [r.meta["kind"] for r in only.routes] == ["anchor", "anchor", "ls", "ls", "ls"]


def test_snnet2_two_way_routes_reuse_stitch_layers(vit_family, builtin):
    net = build_snnet(vit_family[:2], space="snnet2", registries=builtin)
    # sl, ls, sls and lsl all draw on the 3 + 3 one-way stitch points
    assert len(net.stitches) == 6


def test_anchors_space(vit_family, builtin):
    net = build_snnet(vit_family, space="anchors", registries=builtin)
    assert [r.describe() for r in net.routes] == ["vit32[0:4]", "vit48[0:4]", "vit64[0:4]"]
    assert len(net.stitches) == 0


def test_space_routes_respect_can_stitch(vit_family):
    refused = []

    def never(src, p, dst, q):
        refused.append((src, p, dst, q))
        return False

    routes = list(SNNetSpace().routes(vit_family, never))
    assert all(r.is_anchor for r in routes) and refused
    assert all(r.is_anchor for r in SNNet2Space().routes(vit_family, never))


def test_route_printing_and_hashing():
    r = Route.chain(("deit_tiny", 0, 6), ("deit_small", 6, 12))
    assert str(r) == "deit_tiny[0:6] -> ? -> deit_small[6:12]"
    assert r == Route([Segment("deit_tiny", 0, 6), Segment("deit_small", 6, 12)])
    assert hash(r) == hash(r.with_costs(1, 2, accuracy=0.5))
    assert Route.from_dict(r.with_costs(5, 6).to_dict()) == r
    with pytest.raises(Exception, match="block 0"):
        Route.chain(("a", 1, 3))


# -- SpaceContext: what spaces that choose routes on data receive -----------------------------------------
class _ContextSpace(stitch_spaces.StitchSpace):
    """Records the context it gets and yields one stitched route per stitch the factory can build."""

    seen: ClassVar[list] = []

    def routes(self, anchors, can_stitch, context=None):
        type(self).seen.append(context)
        a, b = anchors[0], anchors[1]
        yield Route.chain((a.name, 0, a.depth))
        if context is not None and can_stitch(a.name, 2, b.name, 2):
            layer = context.make_stitch(a.name, 2, b.name, 2)
            assert isinstance(layer, stitchframe.StitchLayer)
            batches = list(context.probe or [])
            yield Route.chain((a.name, 0, 2), (b.name, 2, b.depth), meta={"probe_batches": len(batches)})


class _ContextPlugin:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_spaces(register):
        register("ctx_space", _ContextSpace)


def _context_regs(pm):
    pm.register_plugin(_ContextPlugin, name="ctx")
    return stitchframe.load_registries(pm)


def test_space_context_reaches_spaces_that_declare_it(pm, vit_family):
    regs = _context_regs(pm)
    calls = []

    def probe(anchors):
        calls.append([a.name for a in anchors])
        return [torch.randn(2, 3, 16, 16)] * 3

    _ContextSpace.seen.clear()
    net = stitchframe.build_snnet(
        vit_family[:2], space="ctx_space", registries=regs, probe=probe, seed=7, final_norm="skip_stitched"
    )
    (context,) = _ContextSpace.seen
    assert isinstance(context, stitch_spaces.SpaceContext)
    assert (context.seed, context.final_norm) == (7, "skip_stitched")
    assert calls == [["vit32", "vit48"]]  # the callable probe is resolved once, on first access
    assert context.probe is context.probe and len(calls) == 1
    assert net.routes[1].meta["probe_batches"] == 3
    assert context.make_stitch("vit32", 2, "vit48", 2).dst.channels == 48


def test_space_context_is_optional(pm, vit_family):
    _context_regs(pm)
    # Called directly, a context-taking space runs without one; spaces without the parameter get none.
    assert len(list(_ContextSpace().routes(vit_family[:2], lambda *a: True))) == 1
    never = []
    routes = stitch_spaces.space_routes(
        stitch_spaces.SNNetSpace(), vit_family[:2], lambda *a: True,
        stitch_spaces.SpaceContext(probe=lambda anchors: never.append(1)),
    )
    assert len(routes) == 12 and never == []


def test_make_stitch_refuses_what_the_layer_cannot_bridge(pm, vit_family, cnn_family):
    regs = _context_regs(pm)
    # conv1x1 bridges feature maps only: the factory returns None for tokens, a layer for maps.
    _ContextSpace.seen.clear()
    stitchframe.build_snnet(cnn_family, space="ctx_space", layer="conv1x1", registries=regs)
    context = _ContextSpace.seen[-1]
    assert isinstance(context.make_stitch("cnn8", 1, "cnn16", 1), stitchframe.Conv1x1Stitch)
    _ContextSpace.seen.clear()
    with pytest.raises(stitchframe.ShapeMismatchError, match="only its anchors"):  # conv1x1 fits no token stitch
        stitchframe.build_snnet(vit_family[:2], space="ctx_space", layer="conv1x1", registries=regs)
    assert _ContextSpace.seen[-1].make_stitch("vit32", 2, "vit48", 2) is None


def test_make_stitch_initialises_the_layer_from_the_anchors(pm, vit_family):
    regs = _context_regs(pm)
    joins = []

    class RecordingStitch(stitchframe.LinearStitch):
        def init_from_anchors(self, given):
            joins.append(list(given))

    regs.stitch_layers.register("recording", RecordingStitch, plugin="test")
    _ContextSpace.seen.clear()
    stitchframe.build_snnet(vit_family[:2], space="ctx_space", layer="recording", registries=regs)
    joins.clear()
    layer = _ContextSpace.seen[-1].make_stitch("vit32", 1, "vit48", 3)
    assert isinstance(layer, RecordingStitch)
    assert joins == [[stitchframe.StitchJoin(vit_family[0], 1, vit_family[1], 3)]]


@pytest.mark.parametrize("space", ["snnet", "snnet2"])
def test_a_stride_past_the_depth_is_a_spec_error(deit_like, builtin, space):
    from stitchframe import SpecError

    with pytest.raises(SpecError, match=r"stitch.space_options.stride: 40 is far more than anchor .* allows"):
        build_snnet(deit_like, space=space, space_options={"stride": 40}, registries=builtin)
