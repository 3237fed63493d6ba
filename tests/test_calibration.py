from __future__ import annotations

import pytest
import torch

from stitchframe import LinearStitch, build_snnet, calibrate, load_registries
from stitchframe.calibration import stitch_pairs
from tests import tiny


@pytest.fixture(scope="module")
def builtin():
    return load_registries()


def _net(builtin, space="snnet", **kw):
    anchors = [tiny.vit_anchor(tiny.tiny_vit(d, seed=i), f"vit{d}") for i, d in enumerate((32, 48))]
    return build_snnet(anchors, space=space, registries=builtin, **kw)


def test_one_pass_equals_per_layer_least_squares_on_stored_activations(builtin):
    net = _net(builtin, space_options={"share": False})
    batches = [tiny.images(6, seed=s) for s in range(3)]
    counts = calibrate(net, batches)
    assert set(counts) == set(net.stitches)
    a, b = net.anchors["vit32"], net.anchors["vit48"]
    for key, pts in stitch_pairs(net).items():
        (src, p, dst, q), = pts
        xs = torch.cat([a.activations(x, [p])[p] for x in batches]).double()
        ys = torch.cat([b.activations(x, [q])[q] for x in batches]).double()
        ref = LinearStitch(net.stitches[key].src, net.stitches[key].dst).double().fit(xs, ys)
        assert torch.allclose(net.stitches[key].weight.double(), ref.weight, atol=1e-4), key
        assert counts[key] == 3 * 6 * 17


def test_shared_layers_fit_all_their_pairs(builtin):
    net = _net(builtin)  # windows share layers
    pairs = stitch_pairs(net)
    assert max(len(v) for v in pairs.values()) > 1
    counts = calibrate(net, [tiny.images(4)])
    for key, pts in pairs.items():
        assert counts[key] == len(pts) * 4 * 17


def test_calibration_reduces_the_error_at_the_cut_point(builtin):
    net = _net(builtin, space_options={"share": False})
    key = "vit32:2->vit48:2"
    layer = net.stitches[key]
    a, b = net.anchors["vit32"], net.anchors["vit48"]
    x = tiny.images(16, seed=99)  # held out
    with torch.no_grad():
        before = (layer(a.activations(x, [2])[2]) - b.activations(x, [2])[2]).square().mean()
        calibrate(net, [tiny.images(16, seed=s) for s in range(4)], keys=[key])
        after = (layer(a.activations(x, [2])[2]) - b.activations(x, [2])[2]).square().mean()
    assert after < 0.5 * before


def test_calibrate_accepts_pairs_restores_mode_and_reports_progress(builtin):
    net = _net(builtin).train()
    seen = []
    calibrate(net, [(tiny.images(4), torch.zeros(4))], on_batch=seen.append)
    assert seen == [0] and net.training
    assert calibrate(_net(builtin, space="anchors"), [tiny.images(2)]) == {}


def test_calibrate_cnn_family(cnn_family, builtin):
    net = build_snnet(cnn_family, space="snnet", registries=builtin)
    x = tiny.images(8)
    before = {k: v.weight.clone() for k, v in net.stitches.items()}
    calibrate(net, [x])
    assert all(not torch.equal(before[k], v.weight) for k, v in net.stitches.items())
    for i in range(len(net.routes)):
        assert torch.isfinite(net.forward_route(x, i)).all()
