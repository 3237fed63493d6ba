from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from stitchframe import Preprocess, StitchframeError, build_snnet, calibrate_heads, evaluate_routes
from stitchframe.calibration import classifier_of
from stitchframe.datasets import SyntheticOptions, load_synthetic
from tests import tiny

PRE = Preprocess(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_heads_fitted_by_least_squares_classify_the_data(regs, kind):
    data = load_synthetic(SyntheticOptions(num_classes=4, train_size=256, val_size=128, seed=3), PRE)
    make = (lambda i: tiny.vit_anchor(tiny.tiny_vit(32, seed=i, classes=4), f"v{i}")) if kind == "vit" else (
        lambda i: tiny.cnn_anchor(tiny.tiny_cnn(8, seed=i, classes=4), f"c{i}"))
    net = build_snnet([make(0), make(1)], space="anchors", registries=regs)
    before = [r.accuracy for r in evaluate_routes(net, data.val, batch_size=64, record=False).routes]
    untouched = {n: p.clone() for n, p in net.named_parameters() if ".fc." not in n}
    net.train()
    counts = calibrate_heads(net, DataLoader(data.train, batch_size=64), num_classes=4, ridge=0.01)
    assert net.training  # the mode is restored
    assert counts == {name: 256 for name in net.anchors}
    after = [r.accuracy for r in evaluate_routes(net, data.val, batch_size=64, record=False).routes]
    assert all(a > b + 30 for a, b in zip(after, before)), (before, after)  # chance is 25 %
    assert all(torch.equal(p, untouched[n]) for n, p in net.named_parameters() if n in untouched)


def test_heads_need_a_classifier_of_the_right_size(regs):
    net = build_snnet([tiny.vit_anchor(tiny.tiny_vit(32), "v")], space="anchors", registries=regs)
    assert classifier_of(net.anchors["v"], 10) is net.anchors["v"].head.fc
    with pytest.raises(StitchframeError, match=r"anchor 'v' has no Linear layer with 7 outputs"):
        calibrate_heads(net, [], num_classes=7)
