"""CNN -> ViT and ViT -> CNN routes of the ``cross`` space: exact computation, training, export."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import stitchframe
from tests import tiny

CLASSES = 3


def colour_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images whose label is the colour channel that was brightened."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, 3, 16, 16, generator=g)
    x[torch.arange(n), y] += 0.6
    return x, y


@pytest.fixture
def net(regs):
    anchors = [
        tiny.cnn_anchor(tiny.tiny_cnn(16, seed=0, classes=CLASSES), "cnn16"),
        tiny.vit_anchor(tiny.tiny_vit(64, seed=1, classes=CLASSES), "vit64"),
    ]
    snnet = stitchframe.build_snnet(anchors, space="cross", space_options={"points": 2}, registries=regs)
    stitchframe.calibrate(snnet, [colour_task(32, seed=s)[0] for s in (10, 11)])
    return snnet.eval()


def _route(snnet, front):
    return next(r for r in snnet.routes if len(r.segments) == 2 and r.segments[0].anchor == front)


def test_cnn_to_vit_route_equals_hand_written(net):
    route = _route(net, "cnn16")
    (_, _, p), (_, q, _) = [(s.anchor, s.start, s.end) for s in route.segments]
    cnn, vit, layer = net.anchors["cnn16"], net.anchors["vit64"], net.stitch_for(route, 0)
    x = colour_task(4, seed=3)[0]
    with torch.no_grad():
        h = cnn.stem(x)
        for blk in cnn.blocks[:p]:
            h = blk(h)
        pooled = F.avg_pool2d(h, h.shape[-1] // 4)  # the CNN grid (8x8 or 4x4) onto ViT's 4x4 patches
        patches = pooled.flatten(2).transpose(1, 2) @ layer.weight.T + layer.bias
        cls = h.mean(dim=(2, 3)) @ layer.prefix_weight.T + layer.prefix_bias  # synthesised from pooled features
        t = torch.cat([cls[:, None], patches], dim=1)
        for blk in vit.blocks[q:]:
            t = blk(t)
        expected = vit.head(vit.norm(t))
        assert torch.allclose(net.forward_route(x, route), expected, atol=1e-5)


def test_vit_to_cnn_route_equals_hand_written(net):
    route = _route(net, "vit64")
    (_, _, p), (_, q, _) = [(s.anchor, s.start, s.end) for s in route.segments]
    cnn, vit, layer = net.anchors["cnn16"], net.anchors["vit64"], net.stitch_for(route, 0)
    grid = net.anchors["cnn16"].graph.spec_at(q).grid
    x = colour_task(4, seed=3)[0]
    with torch.no_grad():
        t = vit.stem(x)
        for blk in vit.blocks[:p]:
            t = blk(t)
        patches = t[:, 1:].transpose(1, 2).reshape(4, 64, 4, 4)  # cls dropped, tokens back on their grid
        if grid != (4, 4):
            patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
        h = torch.einsum("bchw,oc->bohw", patches, layer.weight) + layer.bias[None, :, None, None]
        for blk in cnn.blocks[q:]:
            h = blk(h)
        expected = cnn.head(h)
        assert torch.allclose(net.forward_route(x, route), expected, atol=1e-5)


def test_cross_family_routes_train_with_a_plain_loop(net):
    stitched = [i for i, r in enumerate(net.routes) if not r.is_anchor]
    kinds = {net.routes[i].meta["kind"] for i in stitched}
    assert kinds == {"up", "down"}
    x_val, y_val = colour_task(128, seed=99)

    def val_loss():
        with torch.no_grad():
            return sum(F.cross_entropy(net.forward_route(x_val, i), y_val).item() for i in stitched) / len(stitched)

    before = val_loss()
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    rng = random.Random(0)
    for step in range(40):
        x, y = colour_task(32, seed=step)
        net.select(rng.choice(stitched))  # one route per iteration, as SN-Net trains
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    after = val_loss()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("front", ["cnn16", "vit64"])
def test_cross_family_routes_export(net, front):
    route = _route(net, front)
    module = net.export(route).eval()
    x = colour_task(2, seed=5)[0]
    program = torch.export.export(module, (x,))
    with torch.no_grad():
        expected = net.forward_route(x, route)
        assert torch.equal(module(x), expected)
        assert torch.allclose(program.module()(x), expected, atol=1e-6)
    names = {k.split(".")[0] for k in module.state_dict()}
    assert names == {"segments"}
    assert not any("anchors" in k for k in module.state_dict())
