"""Cross-layout stitching: tokens <-> map <-> nhwc, prefix tokens dropped, folded or synthesised, grids resized.

Every case builds the destination activation by hand from a known linear map
and checks that least squares recovers it exactly, synthesised prefix tokens
included.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stitchframe import ActivationSpec, LinearStitch, LowRankStitch
from stitchframe.stitch_layers import ProjectionOptions


def tokens(c, grid, prefix):
    return ActivationSpec(layout="tokens", channels=c, grid=grid, prefix=prefix)


def fmap(c, grid):
    return ActivationSpec(layout="map", channels=c, grid=grid)


def nhwc(c, grid):
    return ActivationSpec(layout="nhwc", channels=c, grid=grid)


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _positions(x, spec):
    """Hand-written: activation -> (positions [B, H, W, C] on the source grid, prefix tokens or None)."""
    if spec.layout == "tokens":
        k = spec.prefix
        return x[:, k:].reshape(x.shape[0], *spec.grid, spec.channels), (x[:, :k] if k else None)
    if spec.layout == "map":
        return x.permute(0, 2, 3, 1), None
    return x, None


def _resize(f, src, dst):
    """Hand-written resize of [B, H, W, C]: 2x2 average pooling to shrink, bilinear to grow."""
    if src.grid == dst.grid:
        return f
    m = f.permute(0, 3, 1, 2)
    if dst.grid[0] < src.grid[0]:
        m = F.avg_pool2d(m, src.grid[0] // dst.grid[0])
    else:
        m = F.interpolate(m, size=dst.grid, mode="bilinear", align_corners=False)
    return m.permute(0, 2, 3, 1)


def _layout(f, prefix, spec):
    """Hand-written: positions [B, H, W, C] (+ prefix [B, k, C]) -> destination layout."""
    if spec.layout == "map":
        return f.permute(0, 3, 1, 2)
    if spec.layout == "nhwc":
        return f
    out = f.reshape(f.shape[0], -1, f.shape[-1])
    return torch.cat([prefix, out], dim=1) if prefix is not None else out


def _truth(src, dst, fold=False):
    """A known stitch: positions projected by (w, b); destination prefix tokens from
    (wp, bp) applied to [mean of source positions, source prefix tokens]."""
    w, b = _randn(dst.channels, src.channels, seed=1), _randn(dst.channels, seed=2)
    d_syn = (1 + src.prefix) * src.channels
    wp, bp = _randn(dst.prefix * dst.channels, d_syn, seed=3), _randn(dst.prefix * dst.channels, seed=4)

    def apply(x):
        f, p = _positions(x, src)
        n = x.shape[0]
        out_p = None
        if dst.prefix and src.prefix == dst.prefix:
            out_p = p @ w.T + b
        elif dst.prefix:
            feats = f.reshape(n, -1, src.channels).mean(dim=1)
            if p is not None:
                feats = torch.cat([feats, p.reshape(n, -1)], dim=1)
            out_p = (feats @ wp.T + bp).reshape(n, dst.prefix, dst.channels)
        if fold and p is not None and not dst.prefix:
            f = f + p.mean(dim=1)[:, None, None, :]
        return _layout(_resize(f, src, dst) @ w.T + b, out_p, dst)

    return apply, w, b, wp, bp


CASES = {
    "tokens->map, drop cls, shrink": (tokens(12, (4, 4), 1), fmap(10, (2, 2)), False),
    "tokens->map, fold cls, grow": (tokens(12, (2, 2), 1), fmap(10, (4, 4)), True),
    "deit->map, fold two prefix tokens": (tokens(12, (4, 4), 2), fmap(7, (4, 4)), True),
    "map->tokens, synthesise cls, shrink": (fmap(6, (4, 4)), tokens(20, (2, 2), 1), False),
    "map->deit tokens, synthesise 2, grow": (fmap(6, (2, 2)), tokens(20, (4, 4), 2), False),
    "deit->vit, synthesise cls from cls+dist+mean": (tokens(12, (4, 4), 2), tokens(20, (2, 2), 1), False),
    "vit->deit, synthesise 2 from cls+mean": (tokens(12, (2, 2), 1), tokens(20, (4, 4), 2), False),
    "vit->vit, shared cls, shrink grid": (tokens(12, (4, 4), 1), tokens(20, (2, 2), 1), False),
    "tokens without prefix->vit": (tokens(12, (4, 4), 0), tokens(20, (4, 4), 1), False),
    "nhwc->tokens (swin->vit)": (nhwc(6, (4, 4)), tokens(20, (2, 2), 1), False),
    "tokens->nhwc (vit->swin)": (tokens(12, (2, 2), 1), nhwc(9, (4, 4)), False),
    "map->nhwc, shrink": (fmap(6, (4, 4)), nhwc(9, (2, 2)), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_least_squares_recovers_known_cross_layout_maps(case):
    src, dst, fold = CASES[case]
    truth, w, b, wp, bp = _truth(src, dst, fold)
    x = src.example(96, dtype=torch.float64)
    y = truth(x)
    layer = LinearStitch(src, dst, ProjectionOptions(prefix="fold" if fold else "drop")).double()
    assert layer(x).shape == y.shape == dst.shape(96)
    layer.fit(x, y)
    assert torch.allclose(layer.weight, w, atol=1e-8)
    assert torch.allclose(layer.bias, b, atol=1e-8)
    if dst.prefix and src.prefix != dst.prefix:
        assert torch.allclose(layer.prefix_weight, wp, atol=1e-8)
        assert torch.allclose(layer.prefix_bias, bp, atol=1e-8)
    assert torch.allclose(layer(x), y, atol=1e-8)


@pytest.mark.parametrize("case", list(CASES))
def test_cross_layout_stitches_train(case):
    src, dst, fold = CASES[case]
    for cls in (LinearStitch, LowRankStitch):
        layer = cls(src, dst, cls.Options(prefix="fold" if fold else "drop"))
        out = layer(src.example(3))
        assert out.shape == dst.shape(3) and torch.isfinite(out).all()
        (out * torch.randn_like(out)).sum().backward()
        trainable = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable if n != "lora_a"), [
            n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0
        ]


def test_synthesised_prefix_is_fitted_through_calibration_rows():
    """The prefix sub-problem has one row per example; the main one, one row per position."""
    src, dst = tokens(12, (4, 4), 2), tokens(20, (2, 2), 1)
    layer = LinearStitch(src, dst).double()
    x = src.example(40, dtype=torch.float64)
    rows = layer.ls_rows(x)
    assert rows["main"].shape == (40 * 4, 12)  # positions after the 4x4 -> 2x2 resize
    assert rows["prefix"].shape == (40, 3 * 12)  # [mean, cls, dist]


def test_least_squares_without_bias_solves_through_the_origin():
    src, dst = tokens(12, (4, 4), 1), fmap(10, (4, 4))
    truth, w, _, *_ = _truth(src, dst)
    x = src.example(64, dtype=torch.float64)
    y = truth(x)
    layer = LinearStitch(src, dst, ProjectionOptions(bias=False)).double().fit(x, y)
    assert layer.bias is None
    rows = x[:, 1:].reshape(-1, 12)
    targets = y.flatten(2).transpose(1, 2).reshape(-1, 10)
    expected = torch.linalg.lstsq(rows, targets).solution.T  # no intercept column
    assert torch.allclose(layer.weight, expected, atol=1e-8)
    assert not torch.allclose(layer.weight, w, atol=1e-3)  # the data has a bias the layer cannot fit
