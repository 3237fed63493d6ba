"""Chosen assemblies go through calibration, training and export like any route."""

from __future__ import annotations

import pytest
import torch
from _dery_cases import FAST, images, timm_zoo

from stitchframe import TrainSpec, build_snnet, calibrate, train_snnet
from tests import tiny


def _direction(route) -> tuple[str, ...]:
    return tuple(s.anchor.rstrip("0123456789") for s in route.segments)


def _prototypes(n: int, size: int, classes: int = 4, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.TensorDataset(protos[y] + 0.5 * torch.randn(n, 3, size, size, generator=g), y)


def _export_matches(net, route) -> None:
    x = tiny.images(3, seed=7) if route.segments[0].anchor in ("cnn", "vit") else None
    anchor = net.anchors[route.segments[0].anchor]
    x = torch.randn(3, *anchor.example_inputs.shape[1:], generator=torch.Generator().manual_seed(7)) if x is None else x
    module = net.export(route).eval()
    with torch.no_grad():
        expected = net.eval().forward_route(x, route)
        assert torch.equal(module(x), expected)
    program = torch.export.export(module, (x,))
    assert torch.allclose(program.module()(x), expected, atol=1e-5)
    assert set(module.state_dict()) and len(module.state_dict()) < len(net.state_dict())


@pytest.fixture(scope="module")
def hetero_net(dery_regs):
    """Fresh tiny CNN + ViT zoo (trained in these tests), every mixed assembly, calibrated on the probe."""
    zoo = [tiny.cnn_anchor(tiny.tiny_cnn(16, seed=0, classes=4), "cnn"),
           tiny.vit_anchor(tiny.tiny_vit(32, 4, seed=1, classes=4), "vit")]
    data = [tiny.images(8, seed=20), tiny.images(8, seed=21)]
    net = build_snnet(zoo, space="dery", space_options={**FAST, "top": 8, "include_anchors": False},
                      registries=dery_regs, probe=data)
    rows = calibrate(net, data)
    assert rows and all(n > 0 for n in rows.values())
    return net


def test_both_directions_calibrate_and_export(hetero_net):
    directions = {_direction(r) for r in hetero_net.routes}
    assert ("cnn", "vit") in directions or ("cnn", "vit", "cnn") in directions
    assert ("vit", "cnn") in directions or ("vit", "cnn", "vit") in directions
    for want in (("cnn", "vit"), ("vit", "cnn")):
        route = next(r for r in hetero_net.routes if _direction(r)[:2] == want)
        _export_matches(hetero_net, route)


def test_a_chosen_assembly_trains(hetero_net, tmp_path):
    data = _prototypes(256, 16)
    cfg = TrainSpec(epochs=3, max_steps=40, batch_size=16, lr=2e-3, stitch_lr=5e-3, weight_decay=0.0, scheduler="constant",
                    log_every=100)
    x, y = data.tensors
    with torch.no_grad():
        before = [float(torch.nn.functional.cross_entropy(hetero_net.eval().forward_route(x, i), y))
                  for i in range(len(hetero_net.routes))]
    result = train_snnet(hetero_net, data, cfg, device="cpu", checkpoint_dir=tmp_path, seed=0)
    assert result.steps == 40
    with torch.no_grad():
        after = [float(torch.nn.functional.cross_entropy(hetero_net.eval().forward_route(x, i), y))
                 for i in range(len(hetero_net.routes))]
    trained = sorted(set(result.routes))
    assert all(after[i] < before[i] for i in trained), (before, after)
    assert sum(result.losses[-8:]) / 8 < sum(result.losses[:8]) / 8


def test_timm_zoo_reassembles_across_three_families(dery_regs):
    zoo = list(timm_zoo())
    data = [images(8, 32, seed=1), images(8, 32, seed=2)]
    net = build_snnet(zoo, space="dery", space_options={**FAST, "top": 4, "max_params": 5e6},
                      registries=dery_regs, probe=data, seed=0)
    mixed = [r for r in net.routes if r.meta["kind"] == "dery"]
    assert mixed and all(len(set(r.anchors)) >= 2 and r.params <= 5e6 for r in mixed)
    layouts = {net.anchors[a].graph.spec_at(0).layout for r in mixed for a in r.anchors}
    assert len(layouts) >= 2  # assemblies join different activation layouts
    calibrate(net, data)
    _export_matches(net, mixed[0])


@pytest.mark.gpu
def test_the_space_runs_on_cuda(dery_regs):
    zoo = [tiny.cnn_anchor(tiny.tiny_cnn(16, seed=0), "cnn").cuda(),
           tiny.vit_anchor(tiny.tiny_vit(32, 4, seed=1), "vit").cuda()]
    data = [tiny.images(8, seed=20), tiny.images(8, seed=21)]  # on the CPU: the space moves what it runs
    net = build_snnet(zoo, space="dery", space_options={**FAST, "top": 4}, registries=dery_regs, probe=data).cuda()
    mixed = [r for r in net.routes if r.meta["kind"] == "dery"]
    assert len(mixed) == 4 and all(r.meta["naswot"] is not None for r in mixed)
    calibrate(net, data)
    route = next(r for r in net.routes if r.meta["kind"] == "dery")
    with torch.no_grad():
        assert torch.isfinite(net.eval().forward_route(data[0].cuda(), route)).all()
