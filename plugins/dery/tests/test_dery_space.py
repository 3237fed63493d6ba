"""The ``dery`` space: budgets, reproducible ranking, probes, refusals and the conformance kit."""

from __future__ import annotations

import json
import math

import pytest
import stitchframe_dery
from _dery_cases import FAST
from stitchframe_dery import Budget, DeryOptions, DerySpace
from stitchframe_dery.search import effective_budgets

import stitchframe
from stitchframe import ShapeMismatchError, SpecError, build_snnet
from stitchframe.testing import check_plugin, check_stitch_space
from tests import tiny


def _build(zoo, regs, data=None, **options):
    return build_snnet(zoo, space="dery", space_options={**FAST, **options}, registries=regs, probe=data)


def _dery_routes(net):
    return [r for r in net.routes if r.meta["kind"] == "dery"]


def _search(zoo, probe, **options):
    context = stitchframe.SpaceContext(probe=probe, anchors=zoo)
    return DerySpace(DeryOptions(**{**FAST, **options})).search(zoo, lambda *a: True, context)


def test_every_assembly_is_within_its_budget_as_the_route_table_counts(mixed_zoo, dery_regs, probe):
    budgets = [{"max_params": 60_000}, {"max_flops": 2.5e6}, {"max_params": 90_000, "max_flops": 4.0e6}]
    options = {"budgets": budgets, "top": 3, "max_params": 120_000}
    net = _build(mixed_zoo, dery_regs, probe, **options)
    table = {r.segments: r for r in net.routes}
    result = _search(mixed_zoo, probe, **{**options, "budgets": [Budget(**b) for b in budgets]})
    for b, chosen in enumerate(result.assemblies):
        assert len(chosen) == 3
        limit = {"max_params": 120_000, **budgets[b]}
        for a in chosen:
            route = table[a.route.segments]  # every chosen assembly is a route of the SN-Net
            assert route.params <= limit["max_params"] and route.flops <= limit.get("max_flops", math.inf), route
    assert {r.meta["budget"] for r in _dery_routes(net)} <= {0, 1, 2} and len(_dery_routes(net)) >= 4


def test_the_search_costs_routes_exactly_as_the_route_table(mixed_zoo, dery_regs, probe):
    result = _search(mixed_zoo, probe, top=50)
    table = {r.segments: (r.flops, r.params) for r in _build(mixed_zoo, dery_regs, probe, top=50).routes}
    assemblies = result.assemblies[0]
    assert len(assemblies) == 3**3 - 3  # every mixed assembly of three anchors over three stages
    for a in assemblies:
        assert table[a.route.segments] == (a.flops, a.params)


def test_effective_budgets_cap_every_budget():
    options = DeryOptions(budgets=[Budget(max_params=5), Budget(max_flops=7)], max_params=3, max_flops=9)
    assert effective_budgets(options) == [Budget(max_params=3, max_flops=9), Budget(max_params=3, max_flops=7)]
    assert effective_budgets(DeryOptions(max_flops=2)) == [Budget(max_flops=2)]


def test_skip_stitched_final_norm_is_counted(mixed_zoo, dery_regs, probe):
    keep = _build(mixed_zoo, dery_regs, probe, top=50)
    skip = build_snnet(mixed_zoo, space="dery", space_options={**FAST, "top": 50}, registries=dery_regs,
                       probe=probe, final_norm="skip_stitched")
    ends_in_vit = [r for r in _dery_routes(keep) if r.segments[-1].anchor.startswith("vit")]
    assert ends_in_vit
    for r in ends_in_vit:
        assert skip.routes[skip.routes.index_of(r)].params < r.params


def test_ranking_is_reproducible_for_a_seed(mixed_zoo, dery_regs):
    runs = [_build(mixed_zoo, dery_regs, None, top=5, seed=4) for _ in range(2)]
    assert [r.describe() for r in runs[0].routes] == [r.describe() for r in runs[1].routes]
    assert [r.meta for r in runs[0].routes] == [r.meta for r in runs[1].routes]
    ranks = [r.meta["rank"] for r in _dery_routes(runs[0])]
    assert ranks == sorted(ranks)
    assert all(r.meta["probe"] == "synthetic" and math.isfinite(r.meta["naswot"]) for r in _dery_routes(runs[0]))


def test_evolution_is_deterministic_and_respects_the_budget(mixed_zoo, dery_regs, probe):
    opts = {"search": "evolution", "population": 4, "generations": 2, "top": 3, "max_params": 80_000, "seed": 1}
    runs = [_build(mixed_zoo, dery_regs, probe, **opts) for _ in range(2)]
    assert [r.describe() for r in runs[0].routes] == [r.describe() for r in runs[1].routes]
    assert _dery_routes(runs[0]) and all(r.params <= 80_000 for r in _dery_routes(runs[0]))


def test_both_directions_are_assembled(mixed_zoo, dery_regs, probe):
    net = _build(mixed_zoo, dery_regs, probe, top=50)
    kinds = {(s.anchor[:3], t.anchor[:3]) for r in _dery_routes(net) for s, t in zip(r.segments, r.segments[1:])}
    assert {("cnn", "vit"), ("vit", "cnn")} <= kinds
    assert any(len(r.segments) == 3 for r in _dery_routes(net))  # A -> B -> C (or A -> B -> A)


def test_given_probe_is_used_and_required_when_asked(mixed_zoo, dery_regs, probe):
    net = _build(mixed_zoo, dery_regs, [(x, None) for x in probe])  # (inputs, target) pairs, as a DataLoader gives
    assert {r.meta["probe"] for r in _dery_routes(net)} == {"given"}
    with pytest.raises(SpecError, match=r"stitch.space_options.probe: 'given' but no probe data reached"):
        _build(mixed_zoo, dery_regs, None, probe="given")
    lazy = []
    _build(mixed_zoo, dery_regs, lambda anchors: lazy.append(len(anchors)) or probe, probe="synthetic")
    assert lazy == []  # a synthetic probe never loads the data


def test_synthetic_probe_needs_one_input_shape(dery_regs):
    big = tiny.vit_anchor(tiny.tiny_vit(32, 4, seed=0), "vit32")
    small = tiny.cnn_anchor(tiny.tiny_cnn(8, seed=0), "cnn8")
    small.example_inputs = tiny.images(1)[:, :, :8, :8]
    with pytest.raises(SpecError, match=r"probe: the anchors expect different input shapes"):
        _build([big, small], dery_regs)


def test_refused_stitches_are_an_error_naming_the_blocks(mixed_zoo, dery_regs, probe):
    # conv1x1 bridges feature maps only, and the zoo has one CNN: no assembly can be stitched. The space warns,
    # and the core refuses an SN-Net of anchors only, naming a refused stitch's blocks and shapes.
    with pytest.warns(UserWarning, match="no two anchors could be stitched"), \
            pytest.raises(ShapeMismatchError, match=r"Stitch \S+ \(B,.*\) -> \S+ \(B,.*\) cannot use .*'conv1x1'"):
        build_snnet(mixed_zoo, space="dery", space_options=FAST, layer="conv1x1", registries=dery_regs, probe=probe)


def test_an_impossible_budget_warns_with_the_cheapest(mixed_zoo, dery_regs, probe):
    with pytest.warns(UserWarning, match=r"no assembly fits budget 0 .*the cheapest assembly found has"):
        net = _build(mixed_zoo, dery_regs, probe, max_params=10)
    assert not _dery_routes(net)


def test_options_are_validated_with_the_spec_path(mixed_zoo, dery_regs):
    with pytest.raises(SpecError, match=r"stitch.space_options.proxies"):
        _build(mixed_zoo, dery_regs, proxies=["snip"])
    with pytest.raises(SpecError, match=r"stitch.space_options.budgets"):
        _build(mixed_zoo, dery_regs, budgets=[{"max_parms": 3}])


def test_plugin_conformance():
    regs = check_plugin(stitchframe_dery, name="dery")
    assert regs.stitch_spaces.origin("dery") == "dery"


@pytest.mark.filterwarnings("ignore:dery. no assembly fits")  # the kit refuses every stitch once
def test_space_conformance(mixed_zoo, probe):
    routes = check_stitch_space(DerySpace, mixed_zoo, DeryOptions(**FAST, top=2), probe=probe, seed=0)
    assert any(r.meta["kind"] == "dery" for r in routes)


def test_one_deep_enough_anchor_leaves_only_the_anchors(dery_regs, probe):
    zoo = [tiny.cnn_anchor(tiny.tiny_cnn(16), "cnn16"), tiny.vit_anchor(tiny.tiny_vit(32, 4), "vit32")]
    with pytest.warns(UserWarning, match=r"only \['vit32'\] has at least stages=4 blocks"):
        net = _build(zoo, dery_regs, probe, stages=4)
    assert [r.meta["kind"] for r in net.routes] == ["anchor", "anchor"]


def test_a_saved_route_table_rebuilds_without_the_probe(mixed_zoo, dery_regs, probe):
    net = _build(mixed_zoo, dery_regs, probe, top=3)
    table = json.loads(json.dumps(net.routes.to_list()))  # as saved next to the weights
    again = build_snnet(mixed_zoo, space="dery", space_options={**FAST, "probe": "given"}, registries=dery_regs,
                        routes=[stitchframe.Route.from_dict(r) for r in table])  # no probe: the space is not run
    assert [r.to_dict() for r in again.routes] == [r.to_dict() for r in net.routes]
