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

    def routes(self, anchors, can_stitch, context=None):
        a, b = anchors[0], anchors[1]
        yield Route.chain((a.name, 0, a.depth), meta={"kind": "anchor"})
        p = a.depth // 2
        if can_stitch(a.name, p, b.name, p):
            yield Route.chain((a.name, 0, p), (b.name, p, b.depth))


def _load_toyvit(ident, opts, regs, *, structure_only=False):
    """``toyvit:<dim>``: a tiny random ViT (random weights: nothing to skip when ``structure_only``)."""
    return tiny.vit_anchor(tiny.tiny_vit(int(ident)), f"toy{ident}")


class ThirdParty:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("toyvit", _load_toyvit)

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


def test_a_plugin_registered_twice_gets_a_one_line_message(pm):
    """Not pluggy's whole name -> module table; loading an installed module again by reference is skipped."""
    pm.register_plugin(ThirdParty, name="thirdparty")
    with pytest.raises(PluginError) as same:
        pm.register_plugin(ThirdParty, name="again")
    assert str(same.value).startswith("Plugin 'again' is already registered as 'thirdparty'")
    with pytest.raises(PluginError) as taken:
        pm.register_plugin(FirstHalfSpace, name="thirdparty")
    for message in (str(same.value), str(taken.value)):
        assert "\n" not in message and "{" not in message and "stitchframe.stitch_layers" not in message
    twice = get_plugin_manager(load_entrypoints=False, plugins=["tests.tiny:TinyPlugin", "tests.tiny:TinyPlugin"])
    assert not twice.problems


def _check_toy(identifier, options):
    """The toy adapter's identifier check: digits only."""
    if not identifier.isdigit():
        raise UnknownNameError(f"Unknown toy size {identifier!r}; write toyvit:<digits>")


class CheckedAdapter:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("toyvit", _load_toyvit, check_identifier=_check_toy)
        register("lazytoy", "tests.tiny:load_tiny", options=tiny.TinyOptions,
                 check_identifier="tests.test_plugins:_check_toy")
        register("buggy", "tests.tiny:load_tiny", options=tiny.TinyOptions, check_identifier=lambda i, o: 1 / 0)


def _spec(*sources):
    return stitchframe.parse_spec({"anchors": list(sources), "stitch": {"space": "snnet"}})


def test_validate_runs_the_adapters_identifier_check(pm):
    """check_identifier runs at validate, without loading a model; its errors carry the spec path."""
    pm.register_plugin(CheckedAdapter, name="checked")
    regs = load_registries(pm)
    assert not regs.problems
    assert stitchframe.validate_spec(_spec("toyvit:32", "lazytoy:7"), regs) == []
    assert regs.anchor_adapters.get("lazytoy").check_identifier is _check_toy  # the lazy reference, imported
    with pytest.raises(UnknownNameError, match=r"^anchors\[1\] \('toyvit:big'\): Unknown toy size 'big'"):
        stitchframe.validate_spec(_spec("toyvit:32", "toyvit:big"), regs)
    with pytest.raises(UnknownNameError, match=r"anchors\[0\] \('lazytoy:x'\): Unknown toy size 'x'"):
        stitchframe.validate_spec(_spec("lazytoy:x"), regs)
    with pytest.raises(PluginError, match="Plugin 'checked' failed to check anchor source 'buggy:1' at anchors.0.: "
                                          "ZeroDivisionError"):
        stitchframe.validate_spec(_spec("buggy:1"), regs)


def test_check_identifier_is_for_anchor_adapters_only(pm):
    class Misplaced:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_register_stitch_layers(register):
            register("scaled", ScaledStitch, check_identifier=_check_toy)

    pm.register_plugin(Misplaced, name="misplaced")
    (problem,) = load_registries(pm).problems
    assert "with check_identifier; only anchor adapters take one" in problem.message


def test_an_unknown_prefix_names_the_plugin_that_provides_it(pm):
    """hf: without stitchframe-transformers: the error says which plugin to install, not a close match."""
    regs = load_registries(pm)
    with pytest.raises(UnknownNameError) as info:
        stitchframe.validate_spec(_spec("hf:bert-base-uncased"), regs)
    msg = str(info.value)
    assert "Unknown anchor prefix 'hf' in source 'hf:bert-base-uncased' at anchors[0].source." in msg
    assert "The stitchframe-transformers plugin provides prefix 'hf'; install it (pip install -e plugins/" in msg
    with pytest.raises(UnknownNameError, match="stitchframe-timm plugin provides prefix 'timm'"):
        stitchframe.validate_spec(_spec("timm:resnet18"), regs)
    with pytest.raises(UnknownNameError) as other:
        stitchframe.validate_spec(_spec("nosuch:x"), regs)
    assert "plugin provides" not in str(other.value)


def test_known_prefixes_are_what_the_in_tree_plugins_register():
    """The table behind those errors agrees with the plugins that are installed here."""
    import importlib.util

    from stitchframe.plugins import KNOWN_PREFIXES

    pm = get_plugin_manager()
    regs = load_registries(pm)
    for prefix, (dist, _install) in KNOWN_PREFIXES.items():
        module = dist.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            continue
        assert prefix in regs.anchor_adapters, (prefix, dist)
        plugin = pm.get_plugin(regs.anchor_adapters.get(prefix).plugin)
        assert getattr(plugin, "__name__", "").split(".")[0] == module, (prefix, dist)


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
            register("notanchor", lambda ident, opts, regs, *, structure_only=False: nn.Linear(2, 2))
            register("raises", lambda ident, opts, regs, *, structure_only=False: 1 / 0)

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
        def routes(self, anchors, can_stitch, context=None):
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
        def routes(self, anchors, can_stitch, context=None):
            yield Route.chain(("vit32", 0, 2), ("cnn16", 1, 3))

    regs.stitch_spaces.register("forced", Forced, plugin="test")
    with pytest.raises(stitchframe.ShapeMismatchError) as exc:
        build_snnet(mixed, space="forced", layer="conv1x1", registries=regs)
    assert "vit32.blocks[1] (B,17,32) -> cnn16.blocks[1] (B,16,8,8)" in str(exc.value)
