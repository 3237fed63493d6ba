"""The plugin contract, exercised by third-party plugins defined in the tests."""

from __future__ import annotations

import attrs
import pytest
import torch
from torch import nn

import stitchframe
from stitchframe import (
    PluginError,
    Route,
    StitchLayer,
    StitchSpace,
    UnknownNameError,
    build_snnet,
    get_plugin_manager,
    load_registries,
)
from stitchframe.plugins import DEFAULT_PLUGINS
from tests import tiny


@attrs.frozen(kw_only=True)
class ScaleOptions:
    factor: float = 1.0


class ScaledStitch(StitchLayer):
    """Linear map followed by a fixed scale (a third-party layer type)."""

    Options = ScaleOptions

    def __init__(self, src, dst, options=None):
        super().__init__(src, dst, options)
        self.proj = nn.Linear(src.channels, dst.channels)

    @classmethod
    def supports(cls, src, dst):
        if src.layout != "tokens" or dst.layout != "tokens" or src.grid != dst.grid:
            return "ScaledStitch joins equal-grid token layouts"
        return None

    def forward(self, x):
        return self.proj(x) * self.options.factor


class FirstHalfSpace(StitchSpace):
    """One route per pair: the first anchor's first half, then the second's second half."""

    def routes(self, anchors, can_stitch):
        a, b = anchors[0], anchors[1]
        yield Route.chain((a.name, 0, a.depth), meta={"kind": "anchor"})
        p = a.depth // 2
        if can_stitch(a.name, p, b.name, p):
            yield Route.chain((a.name, 0, p), (b.name, p, b.depth))


class ThirdParty:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("toyvit", lambda ident, opts: tiny.vit_anchor(tiny.tiny_vit(int(ident)), f"toy{ident}"))

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_layers(register):
        register("scaled", ScaledStitch)

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_spaces(register):
        register("first_half", FirstHalfSpace)


def test_default_plugins_register_builtins():
    pm = get_plugin_manager(load_entrypoints=False)
    assert pm.plugin_names()[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    regs = load_registries(pm)
    assert {"linear", "conv1x1", "lowrank"} <= set(regs.stitch_layers.names())
    assert {"anchors", "snnet", "snnet2"} <= set(regs.stitch_spaces.names())
    assert regs.stitch_layers.origin("linear") == "stitchframe.stitch_layers"
    assert not regs.problems


def test_third_party_plugin_is_used_by_the_engine(pm):
    pm.register_plugin(ThirdParty, name="thirdparty")
    regs = load_registries(pm)
    assert regs.anchor_adapters.origin("toyvit") == "thirdparty"
    spec = stitchframe.parse_spec(
        {
            "anchors": ["toyvit:32", "toyvit:48"],
            "stitch": {"space": "first_half", "layer": "scaled", "layer_options": {"factor": 0.5}},
        }
    )
    net = stitchframe.assemble(spec, regs).eval()
    assert [r.describe() for r in net.routes] == ["toy32[0:4]", "toy32[0:2] -> scaled -> toy48[2:4]"]
    layer = net.stitch_for(net.routes[1], 0)
    assert isinstance(layer, ScaledStitch) and layer.options.factor == 0.5
    x = tiny.images(2)
    a, b = net.anchors["toy32"], net.anchors["toy48"]
    h = layer(a.blocks[1](a.blocks[0](a.stem(x))))
    expected = b.head(b.norm(b.blocks[3](b.blocks[2](h))))
    assert torch.allclose(net.forward_route(x, 1), expected, atol=1e-6)
    report = {row["name"]: row for row in regs.plugin_report()}
    assert report["thirdparty"]["registered"] == {
        "anchor_adapters": ["toyvit"],
        "stitch_layers": ["scaled"],
        "stitch_spaces": ["first_half"],
    }


def test_duplicate_name_is_reported_with_both_plugins_and_others_keep_working(pm):
    class Dup:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_register_stitch_layers(register):
            register("linear", ScaledStitch)

    pm.register_plugin(Dup, name="dup")
    pm.register_plugin(ThirdParty, name="thirdparty")
    regs = load_registries(pm)
    (problem,) = regs.problems
    assert problem.plugin == "dup" and problem.hook == "stitchframe_register_stitch_layers"
    assert "'dup'" in problem.message and "'stitchframe.stitch_layers'" in problem.message
    assert regs.stitch_layers.get("linear").plugin == "stitchframe.stitch_layers"
    assert "scaled" in regs.stitch_layers


def test_hook_that_raises_is_reported_by_plugin_and_hook(pm):
    class Broken:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_register_stitch_spaces(register):
            raise RuntimeError("boom")

    pm.register_plugin(Broken, name="broken")
    regs = load_registries(pm)
    (problem,) = regs.problems
    assert problem.message == "Plugin 'broken' failed in hook 'stitchframe_register_stitch_spaces': RuntimeError: boom"
    assert "snnet" in regs.stitch_spaces
    with pytest.raises(UnknownNameError, match="Broken plugins"):
        raise UnknownNameError("x" + regs.broken_note())
    assert [r["status"] for r in regs.plugin_report() if r["name"] == "broken"] == ["broken"]


def test_misspelled_hook_is_an_error_naming_the_plugin(pm):
    class Typo:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_register_stitch_layer(register):
            pass

    with pytest.raises(PluginError, match="did you mean 'stitchframe_register_stitch_layers'"):
        pm.register_plugin(Typo, name="typo")
    assert not pm.has_plugin("typo")


def test_explicit_plugins_by_reference(monkeypatch):
    pm = get_plugin_manager(load_entrypoints=False, plugins=["tests.tiny:TinyPlugin"])
    assert "tiny" in load_registries(pm).anchor_adapters
    monkeypatch.setenv("STITCHFRAME_PLUGINS", "tests.tiny:TinyPlugin,no_such_module_xyz")
    pm = get_plugin_manager(load_entrypoints=False)
    regs = load_registries(pm)
    assert "tiny" in regs.anchor_adapters
    assert [p.plugin for p in regs.problems] == ["no_such_module_xyz"]
    assert "cannot be imported" in regs.problems[0].message


def test_entry_point_that_fails_to_import_is_reported(monkeypatch):
    import importlib.metadata as md

    class FakeEP:
        name = "badplugin"
        value = "does_not_exist_anywhere"
        dist = None
        group = "stitchframe"

        def load(self):
            raise ImportError("No module named 'does_not_exist_anywhere'")

    class GoodEP(FakeEP):
        name = "goodplugin"
        value = "tests.tiny:TinyPlugin"

        def load(self):
            return tiny.TinyPlugin

    monkeypatch.setattr(md, "entry_points", lambda group=None: [FakeEP(), GoodEP()])
    regs = load_registries(get_plugin_manager())
    assert [p.plugin for p in regs.problems] == ["badplugin"]
    assert "failed to import" in regs.problems[0].message
    assert regs.anchor_adapters.origin("tiny") == "goodplugin"
    monkeypatch.setenv("STITCHFRAME_LOAD_PLUGINS", "")
    assert "tiny" not in load_registries(get_plugin_manager()).anchor_adapters
    monkeypatch.setenv("STITCHFRAME_LOAD_PLUGINS", "goodplugin")
    regs = load_registries(get_plugin_manager())
    assert "tiny" in regs.anchor_adapters and not regs.problems


def test_adapter_returning_wrong_type_or_raising(pm):
    class Bad:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_register_anchor_adapters(register):
            register("notanchor", lambda ident, opts: nn.Linear(2, 2))
            register("raises", lambda ident, opts: 1 / 0)

    pm.register_plugin(Bad, name="bad")
    regs = load_registries(pm)
    with pytest.raises(PluginError, match=r"plugin 'bad' \(adapter 'notanchor'\) returned Linear"):
        stitchframe.load_anchor("notanchor:x", regs)
    with pytest.raises(PluginError, match="Plugin 'bad' failed to load anchor 'raises:x' at anchors\\[0\\]: ZeroDivisionError"):
        stitchframe.load_anchor("raises:x", regs)


def test_resolve_anchor_hook_claims_unprefixed_sources(pm):
    class Resolver:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_resolve_anchor(source, options):
            if source.endswith(".tiny"):
                return tiny.vit_anchor(tiny.tiny_vit(int(options.get("dim", 32))), "resolved")
            return None

    pm.register_plugin(Resolver, name="resolver")
    regs = load_registries(pm)
    anchor = stitchframe.load_anchor(stitchframe.spec.AnchorSpec(source="model.tiny", options={"dim": 48}), regs)
    assert anchor.name == "resolved" and anchor.graph.spec_at(0).channels == 48
    with pytest.raises(UnknownNameError, match="no 'prefix:'"):
        stitchframe.load_anchor("model.onnx", regs)


def test_space_yielding_non_routes_and_layer_that_cannot_bridge(pm, vit_family, cnn_family):
    class BadSpace(StitchSpace):
        def routes(self, anchors, can_stitch):
            yield "not a route"

    class P:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_register_stitch_spaces(register):
            register("bad_space", BadSpace)

    pm.register_plugin(P, name="p")
    regs = load_registries(pm)
    with pytest.raises(PluginError, match="yielded str"):
        build_snnet(vit_family, space="bad_space", registries=regs)
    mixed = [vit_family[0], cnn_family[1]]

    class Forced(StitchSpace):
        def routes(self, anchors, can_stitch):
            yield Route.chain(("vit32", 0, 2), ("cnn16", 1, 3))

    regs.stitch_spaces.register("forced", Forced, plugin="test")
    with pytest.raises(stitchframe.ShapeMismatchError) as exc:
        build_snnet(mixed, space="forced", layer="conv1x1", registries=regs)
    assert "vit32.blocks[1] (B,17,32) -> cnn16.blocks[1] (B,16,8,8)" in str(exc.value)
