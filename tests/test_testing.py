"""The plugin author's conformance kit (stitchframe.testing), on the tiny models.

Each check must pass on conforming objects (the built-ins, the tiny adapter)
and fail, with a message naming the problem, on objects that break one rule.
"""

from __future__ import annotations

import copy
import itertools
import re

import attrs
import pytest
import torch
from torch import nn

import stitchframe
from stitchframe import ActivationSpec, Anchor, LinearStitch, Route, StitchSpace
from stitchframe.stitch_spaces import AnchorsSpace, SNNet2Space, SNNetSpace
from stitchframe.testing import (
    ConformanceError,
    check_anchor,
    check_plugin,
    check_stitch_layer,
    check_stitch_space,
)
from tests import tiny

SPECS = {
    "tokens_cls": ActivationSpec(layout="tokens", channels=32, grid=(4, 4), prefix=1),
    "tokens_small": ActivationSpec(layout="tokens", channels=16, grid=(2, 2)),
    "map_8x8": ActivationSpec(layout="map", channels=8, grid=(8, 8)),
    "map_4x4": ActivationSpec(layout="map", channels=32, grid=(4, 4)),
    "nhwc": ActivationSpec(layout="nhwc", channels=16, grid=(4, 4)),
    "sequence": ActivationSpec(layout="sequence", channels=24),
}
PAIRS = list(itertools.product(SPECS, SPECS))


def _builtin_layers():
    regs = stitchframe.load_registries(stitchframe.get_plugin_manager(load_entrypoints=False))
    return [(e.name, e.obj) for e in regs.stitch_layers]


# -- anchors ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_check_anchor_accepts_tiny_anchors(kind):
    model = tiny.tiny_vit(32) if kind == "vit" else tiny.tiny_cnn(8)
    anchor = tiny.vit_anchor(model, "a") if kind == "vit" else tiny.cnn_anchor(model, "a")
    check_anchor(anchor, model=model, inputs=tiny.images(3))
    check_anchor(anchor)  # without the model: graph and SN-Net checks only


def test_check_anchor_finds_a_missing_block():
    model = tiny.tiny_vit(32)
    anchor = Anchor(
        "short", stem=model.embed, blocks=list(model.blocks)[:-1], norm=model.norm, head=model.head,
        prefix=1, example_inputs=torch.randn(1, 3, 16, 16), model=model,
    )
    check_anchor(anchor)  # consistent on its own...
    with pytest.raises(ConformanceError, match="the anchor route differs from the model"):
        check_anchor(anchor, model=model)  # ...but not the model


def test_check_anchor_finds_copied_weights():
    model = tiny.tiny_vit(32)
    anchor = tiny.vit_anchor(model, "copied")
    anchor.blocks = nn.ModuleList(copy.deepcopy(b) for b in model.blocks)
    with pytest.raises(ConformanceError, match=r"parameter 'blocks\.0\..*' is not one of the model's"):
        check_anchor(anchor, model=model)


def test_check_anchor_finds_blocks_out_of_order():
    model = tiny.tiny_vit(32)
    anchor = Anchor(
        "reversed", stem=model.embed, blocks=list(model.blocks)[::-1], norm=model.norm, head=model.head,
        prefix=1, example_inputs=torch.randn(1, 3, 16, 16), model=model,
    )
    with pytest.raises(ConformanceError, match=r"reversed\.blocks\[0\] \(module 'blocks\.3'\) outputs differently"):
        check_anchor(anchor, model=model)


class _LayerScaleBlock(nn.Module):
    """``x + gamma * mlp(x)`` with gamma starting at 1e-6 (timm's ConvNeXt and CaiT start so): nearly the identity."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.gamma = nn.Parameter(torch.full((width,), 1e-6))

    def forward(self, x):
        return x + self.gamma * self.mlp(x)


def _layer_scale_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), *[_LayerScaleBlock(16) for _ in range(4)], nn.Linear(16, 3))


def test_check_anchor_finds_near_identity_blocks_out_of_order():
    """Swapped blocks that start as the identity: found because the kit lifts the 1e-6 layer scales."""
    model = _layer_scale_model()
    blocks = list(model)[1:5]
    anchor = Anchor(
        "scaled", stem=model[0], blocks=[blocks[0], blocks[2], blocks[1], blocks[3]], head=model[5],
        layout="sequence", example_inputs=torch.randn(1, 5, 6), model=model,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    check_anchor(anchor, model=model, lift_near_zero=False)  # at 1e-6 the swap is invisible
    with pytest.raises(ConformanceError, match=r"scaled\.blocks\[1\] \(module '3'\) outputs differently"):
        check_anchor(anchor, model=model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored after the check
    right = Anchor("scaled", stem=model[0], blocks=blocks, head=model[5], layout="sequence",
                   example_inputs=torch.randn(1, 5, 6), model=model)
    check_anchor(right, model=model)


def test_check_anchor_finds_a_block_without_flops():
    model = tiny.tiny_cnn(8)
    anchor = Anchor(
        "idle", stem=model.stem, blocks=[*model.layers, nn.Identity()], head=model.head, layout="map",
        example_inputs=torch.randn(1, 3, 16, 16),
    )
    with pytest.raises(ConformanceError, match=r"idle\.blocks\[3\] .* has 0 FLOPs"):
        check_anchor(anchor)


def test_check_anchor_finds_decreasing_stages():
    model = tiny.tiny_cnn(8)
    anchor = Anchor(
        "stages", stem=model.stem, blocks=list(model.layers), head=model.head, layout="map",
        stages=[0, 1, 0, 1], example_inputs=torch.randn(1, 3, 16, 16),
    )
    with pytest.raises(ConformanceError, match="stage goes down from 1 to 0"):
        check_anchor(anchor)


def test_check_anchor_finds_activations_off_spec():
    model = tiny.tiny_cnn(8)
    anchor = tiny.cnn_anchor(model, "cnn")
    with pytest.raises(ConformanceError, match=r"has shape \(1, 8, 16, 16\), expected \(B,8,8,8\)"):
        check_anchor(anchor, inputs=torch.randn(1, 3, 32, 32))


def test_check_anchor_finds_model_parameters_left_out():
    model = tiny.tiny_cnn(8)
    model.unused = nn.Linear(4, 4)
    with pytest.raises(ConformanceError, match=r"missing from the anchor \(model parameters not in the anchor: unused.weight, unused.bias\)"):
        check_anchor(tiny.cnn_anchor(model, "cnn"), model=model)


# -- stitching layers -----------------------------------------------------------
@pytest.mark.parametrize("layer", _builtin_layers(), ids=lambda x: x[0])
@pytest.mark.parametrize("pair", PAIRS, ids="->".join)
def test_every_builtin_layer_on_every_pair(layer, pair):
    """Every registered layer on every pair of layouts: conforms where it supports the pair."""
    _name, cls = layer
    src, dst = SPECS[pair[0]], SPECS[pair[1]]
    reason = cls.supports(src, dst)
    if reason is None:
        check_stitch_layer(cls, src, dst)
    else:
        assert isinstance(reason, str) and reason
        with pytest.raises(stitchframe.ShapeMismatchError, match=re.escape(reason)):
            cls(src, dst)


def test_check_stitch_layer_on_options():
    opts = stitchframe.LowRankStitch.Options(rank=2, prefix="fold", resize="nearest")
    check_stitch_layer(stitchframe.LowRankStitch, SPECS["tokens_cls"], SPECS["map_8x8"], opts)


class _Detached(LinearStitch):
    def forward(self, x):
        return super().forward(x.detach())


class _NoFit(LinearStitch):
    def ls_assign(self, solutions):
        pass


class _MixesBatch(LinearStitch):
    def forward(self, x):
        out = super().forward(x)
        return out + out.mean(dim=0, keepdim=True)


class _WrongShape(LinearStitch):
    def forward(self, x):
        return super().forward(x)[:, 1:]


class _MergeDropsUpdate(stitchframe.LowRankStitch):
    def merge(self):
        with torch.no_grad():
            self.lora_b.zero_()  # forgets to fold B·A into the base weight first


class _HiddenState(LinearStitch):
    def __init__(self, src, dst, options=None):
        super().__init__(src, dst, options)
        self.scale = 1.0 + torch.rand(()).item()  # not in the state_dict

    def forward(self, x):
        return super().forward(x) * self.scale


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (_Detached, {}, "no gradient reaches the input"),
        (_NoFit, {}, "least squares does not recover a map"),
        (_MixesBatch, {}, "depends on the rest of the batch"),
        (_WrongShape, {}, r"has shape \(4, 15, 32\), expected \(B,16,32\)"),
        (_HiddenState, {"fit": False}, "loaded from safetensors computes something else"),
        (_MergeDropsUpdate, {}, r"merge\(\) changes the output"),
        (stitchframe.Conv1x1Stitch, {}, "supports\\(\\) refuses the pair: conv1x1 joins 'map' layouts only"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_check_stitch_layer_finds(cls, kwargs, message):
    src = dst = ActivationSpec(layout="tokens", channels=32, grid=(4, 4))
    with pytest.raises(ConformanceError, match=message):
        check_stitch_layer(cls, src, dst, **kwargs)


# -- stitch spaces ----------------------------------------------------------------
@pytest.mark.parametrize("space", [AnchorsSpace, SNNetSpace, SNNet2Space], ids=lambda c: c.__name__)
@pytest.mark.parametrize("family", ["vit_family", "cnn_family"])
def test_check_stitch_space_accepts_builtins(space, family, request):
    routes = check_stitch_space(space, request.getfixturevalue(family))
    assert len(routes) >= len(request.getfixturevalue(family))


def test_check_stitch_space_on_options(vit_family):
    routes = check_stitch_space(SNNetSpace, vit_family, SNNetSpace.Options(nearest=False, share=False))
    assert any(len(r.segments) == 3 for r in routes)


def _two_segment(anchors, p):
    a, b = anchors[0], anchors[-1]
    return Route.chain((a.name, 0, p), (b.name, p, b.depth))


class _Asks(StitchSpace):
    """Asks can_stitch, then does what a subclass's bug says."""

    def routes(self, anchors, can_stitch, context=None):
        a, b = anchors[0], anchors[-1]
        yield Route.chain((b.name, 0, b.depth))
        for p in range(1, min(a.depth, b.depth)):
            if self.keep(can_stitch(a.name, p, b.name, p)):
                yield _two_segment(anchors, p)

    def keep(self, allowed):
        return allowed


class _IgnoresAnswer(_Asks):
    def keep(self, allowed):
        return True


class _NeverAsks(StitchSpace):
    def routes(self, anchors, can_stitch, context=None):
        yield _two_segment(anchors, 1)


class _Twice(_Asks):
    def routes(self, anchors, can_stitch, context=None):
        routes = list(super().routes(anchors, can_stitch))
        return routes + routes[:1]


class _Shuffles(_Asks):
    calls = 0

    def routes(self, anchors, can_stitch, context=None):
        type(self).calls += 1
        routes = list(super().routes(anchors, can_stitch))
        return routes[::-1] if type(self).calls % 2 else routes


class _StopsEarly(StitchSpace):
    def routes(self, anchors, can_stitch, context=None):
        yield Route.chain((anchors[0].name, 0, anchors[0].depth - 1))


class _SkipsTheStem(StitchSpace):
    def routes(self, anchors, can_stitch, context=None):
        yield Route.chain((anchors[0].name, 1, anchors[0].depth))


class _Tuples(StitchSpace):
    def routes(self, anchors, can_stitch, context=None):
        yield (anchors[0].name, 0, anchors[0].depth)


class _SharesAcrossSpecs(StitchSpace):
    def routes(self, anchors, can_stitch, context=None):
        a, b = anchors
        for p, q in ((1, 1), (2, 3)):
            can_stitch(a.name, p, b.name, q)
            yield Route.chain((a.name, 0, p), (b.name, q, b.depth), keys=["shared"])


def test_check_stitch_space_accepts_a_correct_plugin_space(vit_family):
    check_stitch_space(_Asks, vit_family)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_IgnoresAnswer, "of the stitches refused it still yields route"),
        (_NeverAsks, "without asking can_stitch"),
        (_Twice, "twice"),
        (_Shuffles, "different routes \\(or another order\\)"),
        (_StopsEarly, "must end at"),
        (_SkipsTheStem, r"routes raised StitchframeError: Route .* must start at block 0"),
        (_Tuples, "must yield stitchframe.Route"),
        (LinearStitch, "must subclass stitchframe.StitchSpace"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_check_stitch_space_finds(cls, message, vit_family):
    with pytest.raises(ConformanceError, match=message):
        check_stitch_space(cls, vit_family)


def test_check_stitch_space_finds_keys_shared_across_specs(cnn_family):
    with pytest.raises(ConformanceError, match="link key 'shared' is shared by"):
        check_stitch_space(_SharesAcrossSpecs, cnn_family, build=False)


# -- plugins --------------------------------------------------------------------
def test_check_plugin_accepts_builtins_and_the_tiny_adapter():
    import stitchframe.builtins
    import stitchframe.stitch_spaces

    # the built-ins as they are registered: torch-free hook classes and a module
    for plugin in (stitchframe.builtins.StitchLayerHooks, stitchframe.builtins.DatasetHooks, stitchframe.stitch_spaces):
        regs = check_plugin(plugin)
    assert {"linear", "conv1x1", "lowrank"} <= set(regs.stitch_layers.names())
    regs = check_plugin(tiny.TinyPlugin, name="tiny")
    assert regs.anchor_adapters.origin("tiny") == "tiny"


@attrs.frozen(kw_only=True)
class _Undocumented:
    depth: int = 2


class _UndocumentedOptions:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("undocumented", tiny.load_tiny, options=_Undocumented)


class _Misspelled:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_layer(register):  # missing "s"
        register("x", LinearStitch)


class _NotALayer:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_layers(register):
        register("not_a_layer", nn.Linear, options=stitchframe.NoOptions)


class _Raises:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_spaces(register):
        raise RuntimeError("boom")


class _Nothing:
    pass


def _old_loader(identifier, options, registries=None):  # lacks structure_only
    return tiny.load_tiny(identifier, options)


class _OldLoader:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("oldtiny", _old_loader, options=tiny.TinyOptions)


class _BrokenCheck:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("tinycheck", tiny.load_tiny, options=tiny.TinyOptions, check_identifier="tests.tiny:no_such_check")


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (_UndocumentedOptions, "option 'depth' of _Undocumented has no help"),
        (_Misspelled, "unknown hook 'stitchframe_register_stitch_layer'; did you mean"),
        (_NotALayer, "must be a subclass of stitchframe.StitchLayer"),
        (_Raises, "failed in hook 'stitchframe_register_stitch_spaces': RuntimeError: boom"),
        (_Nothing, "registers nothing"),
        (_OldLoader, r"anchor adapter 'oldtiny' .*: its loader '_old_loader' cannot be called as "
                     r"load\(identifier, options, registries, structure_only=True\) \(got an unexpected keyword"),
        (_BrokenCheck, r"anchor adapter 'tinycheck' check_identifier as 'tests.tiny:no_such_check', which cannot be"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_check_plugin_finds(plugin, message):
    with pytest.raises(ConformanceError, match=message):
        check_plugin(plugin)
