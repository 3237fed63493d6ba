from __future__ import annotations

import itertools

import pytest
import torch

from stitchframe import (
    ActivationSpec,
    Conv1x1Stitch,
    LinearStitch,
    LowRankStitch,
    ShapeMismatchError,
    StitchframeError,
    load_registries,
    solve_least_squares,
)
from stitchframe.stitch_layers import NormalEquations, ProjectionOptions
from tests import tiny

TOK = ActivationSpec(layout="tokens", channels=12, grid=(4, 4), prefix=1)
TOK2 = ActivationSpec(layout="tokens", channels=20, grid=(4, 4), prefix=1)
MAP = ActivationSpec(layout="map", channels=6, grid=(4, 4))
MAP2 = ActivationSpec(layout="map", channels=10, grid=(4, 4))
SEQ = ActivationSpec(layout="sequence", channels=8, length=None)
SEQ2 = ActivationSpec(layout="sequence", channels=16, length=None)
NHWC = ActivationSpec(layout="nhwc", channels=6, grid=(4, 4))
NHWC2 = ActivationSpec(layout="nhwc", channels=9, grid=(4, 4))


def _known_map(c_in, c_out, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c_out, c_in, generator=g, dtype=torch.float64), torch.randn(c_out, generator=g, dtype=torch.float64)


def _apply_channels_last(x, w, b):
    return x @ w.T.to(x) + b.to(x)


@pytest.mark.parametrize(
    "cls,src,dst",
    [
        (LinearStitch, TOK, TOK2),
        (LinearStitch, SEQ, SEQ2),
        (LinearStitch, NHWC, NHWC2),
        (Conv1x1Stitch, MAP, MAP2),
        (LowRankStitch, TOK, TOK2),
        (LowRankStitch, MAP, MAP2),
    ],
)
def test_least_squares_recovers_a_known_linear_map(cls, src, dst):
    w, b = _known_map(src.channels, dst.channels)
    x = src.example(64, length=5, dtype=torch.float64)
    if src.layout == "map":
        y = torch.einsum("bchw,oc->bohw", x, w) + b[None, :, None, None]
    else:
        y = _apply_channels_last(x, w, b)
    layer = cls(src, dst).double().fit(x, y)
    assert torch.allclose(layer.effective_weight(), w, atol=1e-8)
    assert torch.allclose(layer.bias, b, atol=1e-8)
    assert torch.allclose(layer(x), y, atol=1e-8)


def test_streamed_batches_equal_one_big_batch():
    x = TOK.example(32, dtype=torch.float64)
    y = TOK2.example(32, dtype=torch.float64)
    one = LinearStitch(TOK, TOK2).double().fit(x, y)
    streamed = LinearStitch(TOK, TOK2).double()
    streamed.fit_start()
    for xb, yb in zip(x.split(8), y.split(8)):
        streamed.fit_update(xb, yb)
    streamed.fit_end()
    assert torch.allclose(one.weight, streamed.weight, atol=1e-10)
    assert torch.allclose(one.bias, streamed.bias, atol=1e-10)


def test_rank_deficient_input_gets_the_minimum_norm_solution():
    x = torch.randn(40, 3, dtype=torch.float64)
    x = torch.cat([x, x[:, :1]], dim=1)  # duplicated column
    y = torch.randn(40, 2, dtype=torch.float64)
    eq = NormalEquations(4, 2)
    eq.add(x, y)
    sol = eq.solve()
    xa = NormalEquations.augment(x)
    ref = torch.linalg.pinv(xa) @ y
    assert torch.allclose(sol, ref, atol=1e-8)


def test_ridge_shrinks_weights_not_bias():
    x = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randn(50, 3, dtype=torch.float64) + 5.0
    eq = NormalEquations(4, 3)
    eq.add(x, y)
    plain, ridged = eq.solve(0.0), eq.solve(10.0)
    assert ridged[:-1].norm() < plain[:-1].norm()
    assert torch.allclose(ridged[-1], y.mean(0), atol=0.5)
    assert solve_least_squares(eq.xtx, eq.xty, 0.0).shape == (5, 3)


def test_fit_end_without_data_is_an_error():
    layer = LinearStitch(TOK, TOK2)
    layer.fit_start()
    with pytest.raises(StitchframeError, match="before any fit_update"):
        layer.fit_end()


def test_conv1x1_equals_linear_on_maps():
    x, y = MAP.example(16), MAP2.example(16)
    conv = Conv1x1Stitch(MAP, MAP2).fit(x, y)
    lin = LinearStitch(MAP, MAP2).fit(x, y)
    assert torch.allclose(conv(x), lin(x), atol=1e-5)


def test_conv1x1_resizes_between_grids():
    small = ActivationSpec(layout="map", channels=6, grid=(2, 2))
    up = Conv1x1Stitch(small, MAP2)
    assert up(small.example(3)).shape == (3, 10, 4, 4)
    down = Conv1x1Stitch(MAP2, small)
    assert down(MAP2.example(3)).shape == (3, 6, 2, 2)
    assert down._resize == "area" and up._resize == "bilinear"
    nearest = Conv1x1Stitch(small, MAP2, ProjectionOptions(resize="nearest"))
    assert nearest._resize == "nearest"


def test_conv1x1_refuses_token_layouts():
    with pytest.raises(ShapeMismatchError, match="conv1x1 joins 'map' layouts only"):
        Conv1x1Stitch(TOK, MAP)
    assert Conv1x1Stitch.supports(TOK, MAP) is not None


def test_linear_refuses_sequence_to_spatial():
    reason = LinearStitch.supports(SEQ, TOK)
    assert "sequence" in reason
    assert "lengths differ" in LinearStitch.supports(
        ActivationSpec(layout="sequence", channels=4, length=3), ActivationSpec(layout="sequence", channels=4, length=5)
    )


def test_tokens_to_map_drops_or_folds_prefix():
    x = TOK.example(2)
    drop = LinearStitch(TOK, MAP2)
    fold = LinearStitch(TOK, MAP2, ProjectionOptions(prefix="fold"))
    with torch.no_grad():
        fold.weight.copy_(drop.weight)
        fold.bias.copy_(drop.bias)
    assert drop(x).shape == fold(x).shape == (2, 10, 4, 4)
    assert not torch.allclose(drop(x), fold(x))
    patches = x[:, 1:]
    expected = (patches @ drop.weight.T + drop.bias).transpose(1, 2).reshape(2, 10, 4, 4)
    assert torch.allclose(drop(x), expected, atol=1e-6)


def test_map_to_tokens_synthesises_prefix_from_pooled_features():
    layer = LinearStitch(MAP, TOK2)
    out = layer(MAP.example(3))
    assert out.shape == (3, 17, 20)
    # least squares fits the synthesised cls token from pooled features
    x = MAP.example(200, dtype=torch.float64)
    pooled = x.mean(dim=(2, 3))
    wp, bp = _known_map(6, 20, seed=3)
    w, b = _known_map(6, 20, seed=4)
    patches = _apply_channels_last(x.flatten(2).transpose(1, 2), w, b)
    y = torch.cat([_apply_channels_last(pooled, wp, bp)[:, None], patches], dim=1)
    layer = LinearStitch(MAP, TOK2).double().fit(x, y)
    assert torch.allclose(layer(x), y, atol=1e-4)


def test_lowrank_trains_only_the_update_and_merges():
    x, y = TOK.example(32), TOK2.example(32)
    layer = LowRankStitch(TOK, TOK2).fit(x, y)
    assert not layer.weight.requires_grad
    assert torch.count_nonzero(layer.lora_b) == 0
    reference = LinearStitch(TOK, TOK2).fit(x, y)
    assert torch.allclose(layer(x), reference(x), atol=1e-6)  # starts exactly at least squares
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"bias", "lora_a", "lora_b"}
    with torch.no_grad():
        layer.lora_b.normal_()
    before = layer(x)
    assert not torch.allclose(before, reference(x))
    layer.merge()
    assert torch.count_nonzero(layer.lora_b) == 0
    assert torch.allclose(layer(x), before, atol=1e-5)


def _anchor_pairs(anchors):
    return [(a, b) for a, b in itertools.permutations(anchors, 2)]


@pytest.fixture(scope="module")
def all_layers():
    regs = load_registries()
    return [(e.name, e.obj) for e in regs.stitch_layers]


def test_every_registered_layer_on_every_pair_of_tiny_anchors(all_layers, vit_family, cnn_family):
    anchors = [*vit_family, *cnn_family]
    tried = 0
    for name, cls in all_layers:
        for a, b in _anchor_pairs(anchors):
            src, dst = a.graph.spec_at(2), b.graph.spec_at(1)
            if cls.supports(src, dst) is not None:
                continue
            layer = cls(src, dst)
            x = a.activations(tiny.images(3), [2])[2].detach().requires_grad_(True)
            y = layer(x)
            assert y.shape == dst.shape(3), (name, a.name, b.name)
            assert torch.isfinite(y).all()
            y.square().mean().backward()
            grads = [p.grad for p in layer.parameters() if p.requires_grad]
            assert grads and all(g is not None for g in grads)
            assert any(g.abs().sum() > 0 for g in grads), (name, a.name, b.name)
            tried += 1
    assert tried >= 3 * 12
