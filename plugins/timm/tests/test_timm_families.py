"""Every family: the anchor route is the timm model, and cut points match ``forward_intermediates``."""

from __future__ import annotations

import pytest
import torch
from _timm_cases import CASES, EXPECTED, anchor, images, model

import stitchframe

ALL = list(CASES)


@pytest.mark.parametrize("case", ALL)
def test_anchor_route_is_the_timm_model(case):
    a, m, x = anchor(case), model(case), images(case)
    with torch.no_grad():
        expected = m(x)
        assert torch.equal(a(x), expected)
        net = stitchframe.SNNet([a], [stitchframe.Route.chain((a.name, 0, a.depth))], {})
        assert torch.equal(net(x), expected)


@pytest.mark.parametrize("case", ALL)
def test_layout_prefix_and_specs(case):
    a = anchor(case)
    prefix, layout = EXPECTED[case]
    g = a.graph
    for pos in g.positions():
        spec = g.spec_at(pos)
        assert spec.layout == layout
        assert spec.prefix == prefix
    assert a.family in {f.name for f in __import__("stitchframe_timm").FAMILIES}


@pytest.mark.parametrize("case", ALL)
def test_stages_are_resolution_levels(case):
    """Positions share a stage exactly when they share a grid, and stages only grow."""
    g = anchor(case).graph
    stages = g.stages()
    assert stages == sorted(stages)
    grids = [g.spec_at(p).grid for p in g.positions()]
    for p in g.positions():
        for q in g.positions():
            assert (stages[p] == stages[q]) == (grids[p] == grids[q])


def _timm_intermediates(case, m, x):
    """(positions, tensors) of ``forward_intermediates`` in the anchor's layout."""
    a = anchor(case)
    if a.layouts[0] == "tokens":
        outs = m.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
        tensors = [torch.cat([prefix, tokens], dim=1) if prefix is not None else tokens for tokens, prefix in outs]
        return list(range(1, a.depth + 1)), tensors
    stages = a.stages
    level_ends = [max(p for p, s in enumerate(stages) if s == level) for level in sorted(set(stages))]
    indices = [1, 2, 3, 4] if case.startswith("resnet") else None
    outs = m.forward_intermediates(x, indices=indices, intermediates_only=True)
    if a.layouts[0] == "nhwc":
        outs = [t.permute(0, 2, 3, 1) for t in outs]
    return level_ends, outs


@pytest.mark.parametrize("case", ALL)
def test_cut_points_match_forward_intermediates(case):
    a, m, x = anchor(case), model(case), images(case)
    with torch.no_grad():
        positions, expected = _timm_intermediates(case, m, x)
        got = a.activations(x, positions)
    assert len(positions) == len(expected) >= 4
    for pos, want in zip(positions, expected):
        assert got[pos].shape == want.shape, pos
        assert torch.equal(got[pos], want), pos


@pytest.mark.parametrize("case", ["deit", "swin", "resnet18", "efficientnet_lite0"])
def test_graph_costs_add_up(case):
    """Block FLOPs and params add up to the whole model's."""
    a, m = anchor(case), model(case)
    g = a.graph
    assert g.params == sum(p.numel() for p in m.parameters())
    x = a.example_inputs
    with torch.no_grad():
        _, total = stitchframe.count_flops(m, x)
    assert g.flops == total
    assert all(b.flops > 0 for b in g.blocks)


@pytest.mark.parametrize("case", ALL)
def test_core_conformance_kit(case):
    """The core's adapter conformance checks, where this core ships them."""
    testing = pytest.importorskip("stitchframe.testing", reason="this stitchframe has no conformance kit yet")
    testing.check_anchor(anchor(case), model=model(case), inputs=images(case))
