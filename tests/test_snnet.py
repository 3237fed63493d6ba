from __future__ import annotations

import copy

import pytest
import torch

import stitchframe.snnet as snnet_module
from stitchframe import Route, RouteModule, StitchframeError, UnknownNameError, build_snnet, load_registries
from tests import tiny


@pytest.fixture(scope="module")
def builtin():
    return load_registries()


@pytest.fixture
def vit_net(builtin):
    anchors = [tiny.vit_anchor(tiny.tiny_vit(d, seed=i), f"vit{d}") for i, d in enumerate((32, 48))]
    return build_snnet(anchors, space="snnet", registries=builtin).eval()


def test_anchor_routes_give_the_models_own_output(builtin):
    models = [tiny.tiny_vit(32, seed=0), tiny.tiny_vit(48, seed=1)]
    anchors = [tiny.vit_anchor(m, f"m{i}") for i, m in enumerate(models)]
    net = build_snnet(anchors, space="snnet", registries=builtin).eval()
    x = tiny.images(5)
    for i, m in enumerate(models):
        net.select(f"m{i}[0:4]")
        assert torch.equal(net(x), m(x))


def test_stitched_route_equals_hand_written_computation(vit_net):
    route = vit_net.select("vit32[0:2] -> linear -> vit48[2:4]")
    a, b = vit_net.anchors["vit32"], vit_net.anchors["vit48"]
    stitch = vit_net.stitch_for(route, 0)
    x = tiny.images(4)
    h = a.stem(x)
    h = a.blocks[1](a.blocks[0](h))
    h = stitch(h)
    h = b.blocks[3](b.blocks[2](h))
    expected = b.head(b.norm(h))
    assert (vit_net(x) - expected).abs().max().item() <= 1e-6


def test_cnn_stitched_route_equals_hand_written_computation(cnn_family, builtin):
    net = build_snnet(cnn_family, space="snnet", registries=builtin).eval()
    route = next(r for r in net.routes if not r.is_anchor and r.segments[0].end == 2)
    a, b = (net.anchors[s.anchor] for s in route.segments)
    x = tiny.images(3)
    h = a.blocks[1](a.blocks[0](a.stem(x)))
    h = net.stitch_for(route, 0)(h)
    for blk in b.blocks[route.segments[1].start :]:
        h = blk(h)
    assert (net.forward_route(x, route) - b.head(h)).abs().max().item() <= 1e-6


def test_select_is_a_lookup(vit_net):
    plans_before = vit_net._plans
    for i in range(len(vit_net.routes)):
        assert vit_net.select(i) is vit_net.routes[i]
        assert vit_net.selected_id == i
    assert vit_net._plans is plans_before
    assert vit_net.select(vit_net.routes[3]) == vit_net.routes[3]
    assert vit_net.select("3") == vit_net.routes[3]
    with pytest.raises(UnknownNameError, match="did you mean"):
        vit_net.select("vit32[0:2] -> linear -> vit48[2:5]")
    with pytest.raises(UnknownNameError, match="out of range"):
        vit_net.select(999)


def test_forward_route_does_not_change_selection(vit_net):
    vit_net.select(0)
    x = tiny.images(2)
    out = vit_net.forward_route(x, 5)
    assert vit_net.selected_id == 0
    vit_net.select(5)
    assert torch.equal(out, vit_net(x))


def test_routes_carry_flops_and_params(vit_net):
    a, b = vit_net.anchors["vit32"], vit_net.anchors["vit48"]
    r0 = vit_net.routes[0]
    assert r0.flops == a.graph.flops and r0.params == sum(p.numel() for p in a.parameters())
    r = vit_net.routes.index_of("vit32[0:2] -> linear -> vit48[2:4]")
    route = vit_net.routes[r]
    stitch = vit_net.stitch_for(route, 0)
    expected_params = (
        sum(p.numel() for m in [a.stem, a.blocks[0], a.blocks[1], stitch, b.blocks[2], b.blocks[3], b.norm, b.head]
            for p in m.parameters())
    )
    assert route.params == expected_params
    expected_flops = a.graph.stem.flops + a.graph.flops_between(0, 2) + b.graph.flops_between(2, 4) + b.graph.head.flops
    stitch_flops = 2 * 17 * 32 * 48  # a linear layer on 17 tokens, batch 1
    assert route.flops == expected_flops + stitch_flops


def test_select_for_budget(vit_net):
    flops = sorted(r.flops for r in vit_net.routes)
    budget = flops[len(flops) // 2]
    chosen = vit_net.select_for(max_flops=budget)
    assert chosen.flops <= budget
    assert chosen.flops == max(f for f in flops if f <= budget)  # no accuracy known: most FLOPs wins
    assert vit_net.selected == chosen
    best_cheap = next(i for i, r in enumerate(vit_net.routes) if r.flops == flops[0])
    vit_net.set_route_meta(best_cheap, accuracy=0.99)
    assert vit_net.select_for(max_flops=budget) == vit_net.routes[best_cheap]
    with pytest.raises(StitchframeError, match="cheapest route"):
        vit_net.select_for(max_flops=1)
    with pytest.raises(StitchframeError, match="latency_ms on every route"):
        vit_net.select_for(max_latency_ms=5)
    assert vit_net.select_for(max_params=vit_net.routes[0].params).params <= vit_net.routes[0].params


def test_select_for_takes_budgets_in_macs(vit_net):
    """``max_macs`` is half of ``max_flops``: both pick the same route; with both, the tighter holds."""
    flops = sorted(r.flops for r in vit_net.routes)
    budget = flops[len(flops) // 2]
    assert vit_net.select_for(max_macs=budget / 2) == vit_net.select_for(max_flops=budget)
    assert vit_net.select_for(max_macs=budget / 2).macs == vit_net.select_for(max_flops=budget).flops / 2
    assert vit_net.select_for(max_flops=budget, max_macs=flops[0] / 2).flops == flops[0]
    with pytest.raises(StitchframeError, match=r"No route fits max_macs=1; the cheapest route .* MACs \("):
        vit_net.select_for(max_macs=1)


def test_export_holds_only_the_route_and_matches_bit_for_bit(vit_net):
    route = vit_net.select("vit32[0:2] -> linear -> vit48[2:4]")
    module = vit_net.export()
    assert isinstance(module, RouteModule) and module.route == route
    n = sum(p.numel() for p in module.parameters())
    assert n == route.params
    x = tiny.images(3)
    assert torch.equal(module(x), vit_net(x))
    keys = set(module.state_dict())
    assert "segments.0.stem.cls_token" in keys and "segments.1.head.fc.weight" in keys
    assert not any(k.startswith("segments.0.blocks.2") for k in keys)
    # a deep copy: training the SN-Net later does not change the export
    with torch.no_grad():
        vit_net.anchors["vit48"].head.fc.weight.add_(1.0)
    assert not torch.equal(module(x), vit_net(x))
    # the precomputed plan follows copies: a copy of the export runs its own modules
    clone, before = copy.deepcopy(module), module(x)
    with torch.no_grad():
        clone.segments[1].head.fc.weight.add_(1.0)
    assert torch.equal(module(x), before) and not torch.equal(clone(x), before)


def test_export_sees_modules_reassigned_after_export(vit_net):
    module = vit_net.export(3).eval()
    x = tiny.images(2)
    before = module(x)
    last = module.segments[-1]
    last.head = copy.deepcopy(last.head)  # as eager quantization swaps a module for another
    last.blocks[0] = copy.deepcopy(last.blocks[0])
    with torch.no_grad():
        last.head.fc.weight.add_(1.0)
        next(last.blocks[0].parameters()).add_(0.5)
    after = module(x)
    assert not torch.equal(after, before)
    with torch.no_grad():  # a plan built from scratch from the segments as they are now
        expected = snnet_module._execute(x, [s.plan() for s in module.segments])
    assert torch.equal(after, expected)


def test_export_passes_torch_export(vit_net):
    module = vit_net.export(4)
    x = tiny.images(2)
    program = torch.export.export(module, (x,))
    assert torch.equal(program.module()(x), module(x))


def test_export_of_lowrank_merges_on_request(vit_family, builtin):
    net = build_snnet(vit_family[:2], space="snnet", layer="lowrank", registries=builtin).eval()
    route = next(r for r in net.routes if not r.is_anchor)
    with torch.no_grad():
        net.stitch_for(route, 0).lora_b.normal_()
    x = tiny.images(2)
    merged = net.export(route, merge=True)
    assert torch.count_nonzero(merged.segments[0].stitch.lora_b) == 0
    assert torch.allclose(merged(x), net.forward_route(x, route), atol=1e-5)


def test_final_norm_skip_stitched(vit_family, builtin):
    keep = build_snnet(vit_family[:2], space="snnet", registries=builtin).eval()
    skip = build_snnet(vit_family[:2], space="snnet", final_norm="skip_stitched", registries=builtin).eval()
    skip.load_state_dict(keep.state_dict())
    x = tiny.images(2)
    assert torch.equal(keep.forward_route(x, 0), skip.forward_route(x, 0))  # anchor routes keep the norm
    stitched = next(r for r in keep.routes if not r.is_anchor)
    b = keep.anchors[stitched.segments[-1].anchor]
    assert not torch.equal(keep.forward_route(x, stitched), skip.forward_route(x, stitched))
    assert skip.routes[skip.routes.index_of(stitched)].params == (
        keep.routes[keep.routes.index_of(stitched)].params - sum(p.numel() for p in b.norm.parameters())
    )
    with pytest.raises(StitchframeError, match="final_norm"):
        build_snnet(vit_family[:2], final_norm="drop", registries=builtin)


def test_state_dict_names_anchors_and_stitches(vit_net):
    keys = list(vit_net.state_dict())
    assert "anchors.vit32.stem.pos_embed" in keys
    assert any(k.startswith("stitches.vit32->vit48#w0.") for k in keys)


def test_route_validation(vit_family):
    from stitchframe import SNNet

    with pytest.raises(StitchframeError, match="unknown anchor"):
        SNNet(vit_family[:1], [Route.chain(("nope", 0, 4))], {})
    with pytest.raises(StitchframeError, match="must end"):
        SNNet(vit_family[:1], [Route.chain(("vit32", 0, 3))], {})
    with pytest.raises(StitchframeError, match="stitching layer"):
        SNNet(vit_family[:2], [Route.chain(("vit32", 0, 2), ("vit48", 2, 4))], {})
    with pytest.raises(StitchframeError, match="unique"):
        SNNet([vit_family[0], vit_family[0]], [Route.chain(("vit32", 0, 4))], {})


@pytest.mark.gpu
def test_snnet_on_cuda(vit_net):
    net = vit_net.cuda()
    x = tiny.images(2).cuda()
    for i in range(len(net.routes)):
        net.select(i)
        assert net(x).is_cuda
    module = net.export(3)
    assert torch.equal(module(x), net.forward_route(x, 3))
