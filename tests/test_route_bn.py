"""Per-route BatchNorm statistics (stitchframe.route_bn): rows per route, restored on select, export, the trie."""

from __future__ import annotations

import torch

from stitchframe import build_snnet, load_registries, recalibrate_route_bn
from stitchframe.evaluate import RouteTrie
from stitchframe.io import load_module_state, save_module
from stitchframe.route_bn import route_bn_layers
from tests import tiny


def _net():
    family = [tiny.cnn_anchor(tiny.tiny_cnn(w, seed=i), f"cnn{w}") for i, w in enumerate((8, 16))]
    return build_snnet(family, space="snnet", registries=load_registries()).eval()


def _batches(n=3):
    return [(tiny.images(16, seed=10 + s) * 3 + 1, torch.zeros(16, dtype=torch.long)) for s in range(n)]


def _outputs(net, x):
    with torch.no_grad():
        return [net.forward_route(x, i) for i in range(len(net.routes))]


def test_enabling_changes_no_output_and_recalibration_changes_every_route():
    net = _net()
    x = tiny.images(4)
    before = _outputs(net, x)
    net.enable_route_bn()
    assert net.enable_route_bn() is net.route_bn  # idempotent
    assert all(torch.equal(a, b) for a, b in zip(before, _outputs(net, x)))
    recalibrate_route_bn(net, iter(_batches()))  # a one-pass iterator is enough
    after = _outputs(net, x)
    assert all(torch.isfinite(a).all() and not torch.equal(a, b) for a, b in zip(after, before))


def test_rows_hold_the_exact_statistics_of_each_route():
    net = _net()
    batches = _batches()
    recalibrate_route_bn(net, batches)
    route = next(r for r in net.routes if not r.is_anchor)
    rid = net.routes.index_of(route)
    dst = net.anchors[route.segments[1].anchor]
    bn = dst.blocks[route.segments[1].start].bn
    # the input of that BatchNorm on this route, every layer before it normalising with batch statistics
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().double()))
    net.train()
    with torch.no_grad():
        for x, _ in batches:
            net.forward_route(x, rid)
    hook.remove()
    net.eval()
    x = torch.cat(seen).transpose(0, 1).flatten(1)  # [C, N*H*W]
    row = bn._rows[rid]
    assert row != 0 and row != bn._rows[net.routes.index_of(dst.name + f"[0:{dst.depth}]")]
    torch.testing.assert_close(bn.route_mean[row].double(), x.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.route_var[row].double(), x.var(1), rtol=1e-4, atol=1e-6)
    # an anchor called directly (outside any route) uses its own anchor route's statistics, row 0
    anchor_rid = net.routes.index_of(f"{dst.name}[0:{dst.depth}]")
    with torch.no_grad():
        assert torch.equal(dst(batches[0][0]), net.forward_route(batches[0][0], anchor_rid))
    assert net.route_bn.route is None


def test_select_export_and_the_shared_prefix_evaluator_use_each_routes_statistics():
    net = _net()
    recalibrate_route_bn(net, _batches())
    x = tiny.images(5)
    expected = _outputs(net, x)
    trie: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        RouteTrie(net).run(x, lambda rid, y: trie.__setitem__(rid, y))
        for rid in range(len(net.routes)):
            assert torch.equal(trie[rid], expected[rid])
            net.select(rid)
            assert torch.equal(net(x), expected[rid])
            exported = net.export(rid).eval()
            assert not route_bn_layers(exported)  # plain BatchNorm layers holding the route's statistics
            assert not any("route_" in k for k in exported.state_dict())
            assert torch.equal(exported(x), expected[rid])
    # switching back and forth restores each route's statistics
    with torch.no_grad():
        net.select(len(net.routes) - 1)
        net(x)
        net.select(0)
        assert torch.equal(net(x), expected[0])


def test_statistics_round_trip_through_safetensors(tmp_path):
    net = _net()
    recalibrate_route_bn(net, _batches())
    save_module(net, tmp_path / "w.safetensors", kind="snnet")
    fresh = _net()
    fresh.enable_route_bn()
    load_module_state(fresh, tmp_path / "w.safetensors", kind="snnet")
    x = tiny.images(3)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(net, x), _outputs(fresh, x)))


def test_anchors_only_adapts_the_anchors_and_spreads_their_statistics_to_every_row():
    net = _net()
    recalibrate_route_bn(net, _batches(), anchors_only=True)
    for bn in route_bn_layers(net):
        assert torch.equal(bn.route_mean, bn.route_mean[:1].expand_as(bn.route_mean))
        assert torch.equal(bn.running_mean, bn.route_mean[0])
    fresh = _net()
    moved = [not torch.equal(a.running_mean, b.running_mean)
             for a, b in zip(route_bn_layers(net), (m for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d)))]
    assert all(moved)  # the data's statistics (inputs shifted and scaled), not the initial ones


def test_frozen_anchor_statistics_stay_and_only_rows_after_a_stitch_change():
    net = _net()
    net.enable_route_bn()
    start = {id(bn): (bn.route_mean.clone(), bn.route_var.clone()) for bn in route_bn_layers(net)}
    recalibrate_route_bn(net, _batches(), anchor_rows=False)
    changed_later_rows = False
    for bn in route_bn_layers(net):
        mean, var = start[id(bn)]
        assert torch.equal(bn.route_mean[0], mean[0]) and torch.equal(bn.route_var[0], var[0])
        if len(mean) > 1:
            changed_later_rows |= not torch.equal(bn.route_mean[1:], mean[1:])
    assert changed_later_rows
    x = tiny.images(3)
    fresh = _net()
    with torch.no_grad():  # anchor routes are untouched
        for rid, r in enumerate(net.routes):
            if r.is_anchor:
                assert torch.equal(net.forward_route(x, rid), fresh.forward_route(x, rid))
