"""A segmentation head trained on two routes of a stitched backbone, evaluated per route."""

from __future__ import annotations

import math

import pytest
import torch
from _dense_cases import vit
from stitchframe_dense import (
    FPNLiteHead,
    Segmenter,
    ShapesSegmentation,
    StitchedBackbone,
    confusion_matrix,
    evaluate_segmentation,
    metrics_from_confusion,
    train_segmentation,
)

import stitchframe


def test_shapes_are_deterministic_and_masks_hold_the_shapes():
    data = ShapesSegmentation(64, (32, 32), seed=3)
    x, m = data[7]
    x2, m2 = data[7]
    assert torch.equal(x, x2) and torch.equal(m, m2)
    assert x.shape == (3, 32, 32) and m.shape == (32, 32) and m.dtype == torch.long
    classes = torch.cat([data[i][1].unique() for i in range(64)]).unique().tolist()
    assert classes == [0, 1, 2, 3]
    for i in range(8):
        _, mask = data[i]
        assert 0 < (mask > 0).float().mean() < 0.9  # at least one shape, and background left
    other = ShapesSegmentation(64, (32, 32), seed=4)
    assert not torch.equal(other[7][1], m)
    with pytest.raises(stitchframe.SpecError, match="must be at least 1, 1 and 8x8"):
        ShapesSegmentation(0)


def test_miou_from_a_known_confusion():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = metrics_from_confusion(conf)
    assert m.iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2]) and math.isnan(m.iou[3])  # class 3 absent: ignored
    assert m.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m.pixel_accuracy == pytest.approx(4 / 6)


@pytest.fixture(scope="module")
def model(regs):
    net = stitchframe.build_snnet([vit(regs, 32, 0), vit(regs, 48, 1)], registries=regs)
    calib = ShapesSegmentation(64, (32, 32), seed=9)
    stitchframe.calibrate(net, [torch.stack([calib[i][0] for i in range(64)])])
    backbone = StitchedBackbone(net, out_channels=32)
    torch.manual_seed(0)
    return Segmenter(backbone, FPNLiteHead(backbone.out_channels, num_classes=4, dim=32))


def _mean(values):
    return sum(values) / len(values)


def test_a_head_trains_on_two_routes_and_is_evaluated_per_route(model):
    """SN-Netv2 style: backbone, projections and head trained together, one route per step."""
    net = model.backbone.snnet
    stitched = next(i for i, r in enumerate(net.routes) if not r.is_anchor)
    routes = [0, stitched]
    train_data, val_data = ShapesSegmentation(256, (32, 32), seed=0), ShapesSegmentation(64, (32, 32), seed=1)
    history = train_segmentation(
        model, train_data, routes=routes, steps=200, batch_size=16, lr=3e-3, train_backbone=True
    )
    for rid in routes:
        losses = history[rid]
        assert len(losses) == 100
        assert _mean(losses[-10:]) < 0.8 * _mean(losses[:10]), net.routes[rid].describe()
    metrics = evaluate_segmentation(model, val_data, routes=list(range(len(net.routes))), num_classes=4)
    assert sorted(metrics) == list(range(len(net.routes)))
    for m in metrics.values():
        assert 0.0 <= m.miou <= 1.0 and 0.0 <= m.pixel_accuracy <= 1.0 and len(m.iou) == 4
    masks = torch.stack([val_data[i][1] for i in range(len(val_data))])
    all_background = metrics_from_confusion(confusion_matrix(torch.zeros_like(masks), masks, 4))
    for rid in routes:  # the trained routes find shapes, not just the background
        assert metrics[rid].miou > all_background.miou + 0.05, (rid, metrics[rid], all_background)
        assert metrics[rid].iou[1:] != (0.0, 0.0, 0.0)


def test_a_frozen_backbone_stays_frozen(model):
    net = model.backbone.snnet
    before = {k: v.clone() for k, v in net.state_dict().items()}
    projections = {k: v.clone() for k, v in model.backbone.projections.state_dict().items()}
    history = train_segmentation(
        model, ShapesSegmentation(128, (32, 32), seed=2), routes=[0, 1], steps=40, batch_size=16, lr=3e-3
    )
    for losses in history.values():
        assert _mean(losses[-5:]) < _mean(losses[:5])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters())  # flags restored
    changed = [k for k, v in model.backbone.projections.state_dict().items() if not torch.equal(projections[k], v)]
    assert changed  # the projections (the neck) train with the head


@pytest.mark.gpu
def test_segmentation_on_cuda(model):
    import copy

    gpu = copy.deepcopy(model).cuda()
    history = train_segmentation(gpu, ShapesSegmentation(32, (32, 32)), routes=[0, 1], steps=4, batch_size=8)
    assert all(len(h) == 2 for h in history.values())
    metrics = evaluate_segmentation(gpu, ShapesSegmentation(16, (32, 32), seed=1), routes=[0, 1], num_classes=4)
    assert set(metrics) == {0, 1}
