from __future__ import annotations

import pytest
import torch

import stitchframe
from stitchframe import ShapeMismatchError, SpecError, UnknownNameError, assemble, load_anchor, parse_spec, validate_spec
from stitchframe.spec import AnchorSpec


def test_assemble_from_spec(regs):
    spec = parse_spec(
        {
            "anchors": ["tiny:vit32", {"source": "tiny:vit48", "name": "big", "options": {"seed": 2}}],
            "stitch": {"space": "snnet", "space_options": {"share": False}},
        }
    )
    net = assemble(spec, regs)
    assert list(net.anchors) == ["vit32", "big"]
    assert net.routes[1].describe() == "big[0:4]"
    assert len(net.routes) == 2 + 10


def test_anchor_options_are_validated_with_the_spec_path(regs):
    with pytest.raises(SpecError, match=r"^anchors\[1\].options.depth: 'depth' must be >= 1"):
        load_anchor(AnchorSpec(source="tiny:vit32", options={"depth": 0}), regs, where="anchors[1]")
    with pytest.raises(SpecError, match=r"anchors\[0\].options: unknown key\(s\) 'sed'; did you mean 'seed'\?"):
        load_anchor(AnchorSpec(source="tiny:vit32", options={"sed": 0}), regs)


def test_unknown_prefix_lists_registered_prefixes(regs):
    with pytest.raises(UnknownNameError) as exc:
        load_anchor("tinny:vit32", regs, where="anchors[2]")
    assert str(exc.value) == (
        "Unknown anchor prefix 'tinny' in source 'tinny:vit32' at anchors[2]; did you mean 'tiny'?. "
        "Write it as 'prefix:identifier' with a registered prefix: tiny."
    ) or "did you mean 'tiny'" in str(exc.value)


def test_unknown_space_and_layer(regs, vit_family):
    with pytest.raises(UnknownNameError, match=r"Unknown stitch space 'snet' at stitch.space; did you mean 'snnet'\?"):
        stitchframe.build_snnet(vit_family, space="snet", registries=regs)
    with pytest.raises(UnknownNameError, match=r"Unknown stitch layer 'lowrnak' at stitch.layer; did you mean 'lowrank'\?"):
        stitchframe.build_snnet(vit_family, layer="lowrnak", registries=regs)
    with pytest.raises(SpecError, match=r"stitch.layer_options: unknown key\(s\) 'rnk'"):
        stitchframe.build_snnet(vit_family, layer="lowrank", layer_options={"rnk": 2}, registries=regs)
    with pytest.raises(SpecError, match=r"stitch.space_options.kernel"):
        stitchframe.build_snnet(vit_family, space_options={"kernel": 0}, registries=regs)


def test_layer_that_bridges_nothing_is_refused_with_both_blocks(regs, vit_family):
    # an explicit layer that fits no stitch of the space would silently leave only the anchors
    with pytest.raises(ShapeMismatchError, match=r"vit32\.blocks\[\d\] \(B,17,32\) -> vit48\.blocks\[\d\] \(B,17,48\) "
                       r"cannot use stitching layer 'conv1x1'.*only its anchors"):
        stitchframe.build_snnet(vit_family, layer="conv1x1", registries=regs)


def test_validate_spec_checks_without_loading(regs):
    ok = parse_spec({"anchors": ["tiny:vit32", "tiny:vit48"], "stitch": {"layer": "lowrank", "layer_options": {"rank": 2}}})
    assert validate_spec(ok, regs) == []
    bad_layer = parse_spec({"anchors": ["tiny:vit32"], "stitch": {"layer": "lowrank", "layer_options": {"rank": 0}}})
    with pytest.raises(SpecError, match="stitch.layer_options.rank"):
        validate_spec(bad_layer, regs)
    bad_anchor = parse_spec({"anchors": ["tiny:vit32", {"source": "tiny:vit48", "options": {"depth": "x"}}]})
    with pytest.raises(SpecError, match=r"anchors\[1\].options.depth"):
        validate_spec(bad_anchor, regs)
    with pytest.raises(UnknownNameError, match=r"anchors\[0\]"):
        validate_spec(parse_spec({"anchors": ["nope:x"]}), regs)


def test_validate_warns_of_route_bn_statistics_over_frozen_batchnorm(regs):
    base = {"anchors": ["tiny:vit32", "tiny:vit48"]}
    clash = parse_spec({**base, "train": {"route_bn_batches": 4, "freeze": ["batchnorm"]}})
    (note,) = validate_spec(clash, regs)
    assert "train.route_bn_batches with batchnorm in train.freeze" in note and "route_bn_batches: 0" in note
    assert validate_spec(parse_spec({**base, "train": {"route_bn_batches": 4}}), regs) == []
    assert validate_spec(parse_spec({**base, "train": {"freeze": ["batchnorm"]}}), regs) == []


def test_validate_warns_of_a_refit_with_nothing_to_fit_again(regs):
    base = {"anchors": ["tiny:vit32", "tiny:vit48"]}
    for empty in ({"calibration": {"refit": True, "batches": 0}}, {"calibration": {"refit": True},
                                                                  "train": {"max_steps": 0}}):
        (note,) = validate_spec(parse_spec({**base, **empty}), regs)
        assert note.startswith("calibration.refit with no calibration batches or no training")
    assert validate_spec(parse_spec({**base, "calibration": {"refit": True}}), regs) == []


def test_build_from_given_routes_skips_the_space(regs, vit_family):
    net = stitchframe.build_snnet(vit_family, space="snnet", registries=regs)
    table = [stitchframe.Route.from_dict(r) for r in net.routes.to_list()]
    again = stitchframe.build_snnet(vit_family, space="anchors", registries=regs, routes=table)
    assert [r.describe() for r in again.routes] == [r.describe() for r in net.routes]
    assert [(r.flops, r.params) for r in again.routes] == [(r.flops, r.params) for r in net.routes]
    assert set(again.stitches) == set(net.stitches)


def test_load_anchor_calls_loaders_with_registries_and_structure_only(regs):
    seen = []

    def load_wrapped(identifier, options, registries, *, structure_only=False):
        seen.append((registries, structure_only, torch.empty(0).device.type))
        # an adapter built on another source
        return load_anchor(f"tiny:{identifier}", registries, structure_only=structure_only)

    regs.anchor_adapters.register("wrapped", load_wrapped, plugin="test")
    anchor = load_anchor("wrapped:vit32", regs)
    assert anchor.name == "vit32" and anchor.depth == 4
    assert not any(p.is_meta for p in anchor.parameters())
    bare = load_anchor("wrapped:vit32", regs, structure_only=True)
    assert seen == [(regs, False, "cpu"), (regs, True, "meta")]  # structure-only loads run on the meta device
    assert all(p.is_meta for p in bare.parameters()) and bare.depth == 4


def test_build_snnet_hands_each_layer_the_cut_points_it_joins(regs, vit_family):
    calls = {}

    class RecordingStitch(stitchframe.LinearStitch):
        def init_from_anchors(self, joins):
            calls[id(self)] = list(joins)

    regs.stitch_layers.register("recording", RecordingStitch, plugin="test")
    net = stitchframe.build_snnet(vit_family[:2], layer="recording", registries=regs)
    assert set(calls) == {id(layer) for layer in net.stitches.values()}
    for route in net.routes:
        for i, (src, p, dst, q, _link) in enumerate(route.stitch_points()):
            join = stitchframe.StitchJoin(net.anchors[src], p, net.anchors[dst], q)
            assert join in calls[id(net.stitch_for(route, i))]
    shared = [joins for joins in calls.values() if len(joins) > 1]
    assert shared, "the snnet space shares one layer per window, so some layers join several pairs"


def test_a_failing_init_from_anchors_names_the_plugin_and_layer(regs, vit_family):
    class BrokenStitch(stitchframe.LinearStitch):
        def init_from_anchors(self, joins):
            raise RuntimeError("no transforms")

    regs.stitch_layers.register("broken", BrokenStitch, plugin="brokenplugin")
    with pytest.raises(stitchframe.PluginError, match=r"Plugin 'brokenplugin' failed to initialise stitching layer "
                       r"'vit32->vit48#w0' \(BrokenStitch.init_from_anchors\): RuntimeError: no transforms"):
        stitchframe.build_snnet(vit_family[:2], layer="broken", registries=regs)
