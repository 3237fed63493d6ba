"""The ``cross`` stitch space: cut points matched by FLOPs fraction or depth across families."""

from __future__ import annotations

from types import SimpleNamespace

import attrs
import pytest

import stitchframe
from stitchframe import ActivationSpec, BlockGraph, BlockInfo, SpecError
from stitchframe.cross_space import CrossOptions, CrossSpace, cut_fractions, match_cut_points
from tests import tiny

SEQ = ActivationSpec(layout="sequence", channels=8)
MAP = ActivationSpec(layout="map", channels=8, grid=(4, 4))


def fake_anchor(name, block_flops, *, stem=0, head=0, spec=SEQ, family=""):
    """An object with what a stitch space reads: name, depth, family and a BlockGraph."""

    def info(kind, index, flops):
        return BlockInfo(
            name=f"{name}.{kind}[{index}]", kind=kind, index=index, stage=0, path="", flops=flops, params=0,
            out_spec=None if kind == "head" else spec,
        )

    blocks = [info("block", i, f) for i, f in enumerate(block_flops)]
    graph = BlockGraph(name, info("stem", -1, stem), blocks, info("head", len(blocks), head))
    return SimpleNamespace(name=name, depth=len(blocks), graph=graph, family=family)


def routes(anchors, can_stitch=lambda *a: True, **options):
    return list(CrossSpace(CrossOptions(**options)).routes(anchors, can_stitch))


def stitched(rs):
    return [(r.segments[0].anchor, r.segments[0].end, r.segments[1].anchor, r.segments[1].start) for r in rs[1:]
            if len(r.segments) == 2]


def test_cut_fractions_by_flops_and_depth():
    a = fake_anchor("a", [10, 30, 60], stem=0)
    assert cut_fractions(a, "flops") == pytest.approx([0.0, 0.1, 0.4, 1.0])
    assert cut_fractions(a, "depth") == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


def test_hand_checked_matching():
    # small: fractions 0.25, 0.5, 0.75 after blocks 0..2; large: 0.25 after block 0 (then 1.0)
    small = fake_anchor("small", [10, 10, 10, 10])
    large = fake_anchor("large", [20, 60])
    opts = CrossOptions(tolerance=0.2, between=False, points=None)
    assert match_cut_points(small, large, lambda *a: True, opts) == [(1, 1)]
    # large -> small: position 1 (0.25) meets small position 1 (0.25)
    assert match_cut_points(large, small, lambda *a: True, opts) == [(1, 1)]
    # with a wider tolerance small position 2 (0.5) also reaches large position 1 (gap 0.25)
    assert match_cut_points(small, large, lambda *a: True, attrs.evolve(opts, tolerance=0.3)) == [(1, 1), (2, 1)]


def test_depth_matching_differs_from_flops_matching():
    front = fake_anchor("front", [10, 10, 10, 10])
    end = fake_anchor("end", [70, 10, 10, 10])  # most work in its first block
    opts = CrossOptions(between=False, points=None, tolerance=1.0)
    by_depth = match_cut_points(front, end, lambda *a: True, attrs.evolve(opts, match="depth"))
    by_flops = match_cut_points(front, end, lambda *a: True, opts)
    assert by_depth == [(1, 1), (2, 2), (3, 3)]
    assert by_flops == [(1, 1), (2, 1), (3, 1)]  # end fractions 0.7, 0.8, 0.9: block 0 is nearest


def test_routes_shape_directions_and_flops_order():
    cheap = fake_anchor("cheap", [10] * 6, head=1)
    costly = fake_anchor("costly", [40] * 4, head=1)
    rs = routes([costly, cheap], points=None)
    assert [r.describe() for r in rs[:2]] == ["cheap[0:6]", "costly[0:4]"]  # anchors first, by FLOPs
    kinds = {r.meta["kind"] for r in rs[2:]}
    assert kinds == {"up", "down"}
    lo, hi = cheap.graph.flops, costly.graph.flops
    for r in rs[2:]:
        front, end = r.segments
        assert front.start == 0 and 1 <= front.end < (6 if front.anchor == "cheap" else 4)
        assert 1 <= end.start < (4 if end.anchor == "costly" else 6)
        assert (r.meta["kind"] == "up") == (front.anchor == "cheap")
        flops = _route_flops(r, {"cheap": cheap, "costly": costly})
        assert lo < flops < hi
    only_up = routes([costly, cheap], directions=["up"], include_anchors=False)
    assert only_up and all(r.segments[0].anchor == "cheap" for r in only_up)


def _route_flops(route, by_name):
    front, end = route.segments
    f, e = by_name[front.anchor].graph, by_name[end.anchor].graph
    return f.stem.flops + f.flops_between(0, front.end) + e.flops_between(end.start, e.depth) + e.head.flops


def test_between_drops_routes_outside_the_anchors_flops():
    cheap = fake_anchor("cheap", [10, 10, 10, 10])
    costly = fake_anchor("costly", [10, 10, 10, 100])  # a stitch into its last block costs more than itself
    kept = routes([cheap, costly], between=True, points=None, tolerance=1.0)
    everything = routes([cheap, costly], between=False, points=None, tolerance=1.0)
    assert len(kept) < len(everything)
    by_name = {"cheap": cheap, "costly": costly}
    assert all(cheap.graph.flops < _route_flops(r, by_name) < costly.graph.flops for r in kept[2:])


def test_equal_cost_anchors_need_between_off():
    a, b = fake_anchor("a", [10] * 4), fake_anchor("b", [10] * 4)
    assert stitched(routes([a, b], points=None)) == []
    assert stitched(routes([a, b], points=None, between=False)) == [
        ("a", 1, "b", 1), ("a", 2, "b", 2), ("a", 3, "b", 3), ("b", 1, "a", 1), ("b", 2, "a", 2), ("b", 3, "a", 3)
    ]


def test_points_thin_the_matches_evenly():
    a, b = fake_anchor("a", [10] * 12), fake_anchor("b", [20] * 12)
    all_points = stitched(routes([a, b], directions=["up"], points=None, between=False))
    assert len(all_points) == 11
    three = stitched(routes([a, b], directions=["up"], points=3, between=False))
    assert [p for _, p, _, _ in three] == [1, 6, 11]


def test_pairs_and_family_filters():
    anchors = [
        fake_anchor("cnn_s", [10] * 4, family="cnn"),
        fake_anchor("cnn_l", [20] * 4, family="cnn"),
        fake_anchor("vit_l", [40] * 4, family="vit"),
    ]
    pairs = lambda rs: {tuple(sorted(r.anchors)) for r in rs if not r.is_anchor}
    assert pairs(routes(anchors, between=False)) == {("cnn_l", "cnn_s"), ("cnn_s", "vit_l"), ("cnn_l", "vit_l")}
    assert pairs(routes(anchors, pairs="neighbours", between=False)) == {("cnn_l", "cnn_s"), ("cnn_l", "vit_l")}
    assert pairs(routes(anchors, cross_family_only=True, between=False)) == {("cnn_s", "vit_l"), ("cnn_l", "vit_l")}


def test_can_stitch_is_respected():
    text = fake_anchor("text", [10] * 4, spec=SEQ)
    image = fake_anchor("image", [20] * 4, spec=MAP)

    def can_stitch(src, p, dst, q):  # as the engine's: sequence never meets a spatial layout
        return {src, dst} != {"text", "image"}

    assert [r.describe() for r in routes([text, image], can_stitch)] == ["text[0:4]", "image[0:4]"]


def test_cross_is_a_builtin_with_validated_options(regs):
    entry = regs.stitch_spaces.get("cross")
    assert entry.plugin == "stitchframe.cross_space"
    a = tiny.vit_anchor(tiny.tiny_vit(32, seed=0), "vit32")
    b = tiny.cnn_anchor(tiny.tiny_cnn(16, seed=1), "cnn16")
    with pytest.raises(SpecError, match="stitch.space_options"):
        stitchframe.build_snnet([a, b], space="cross", space_options={"directions": ["sideways"]}, registries=regs)
    net = stitchframe.build_snnet([a, b], space="cross", space_options={"points": 1}, registries=regs)
    kinds = [r.meta["kind"] for r in net.routes]
    assert kinds.count("up") <= 1 and kinds.count("down") <= 1 and kinds.count("anchor") == 2
