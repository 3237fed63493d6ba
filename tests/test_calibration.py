from __future__ import annotations

import pytest
import torch

from stitchframe import LinearStitch, StitchframeError, build_snnet, calibrate, load_registries
from stitchframe.calibration import augment_images, stitch_pairs
from stitchframe.stitch_layers import RIDGE_GRID, NormalEquations, choose_ridge
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


# ---------------------------------------------------------------------------
# share_fit: mean reproduces the SN-Net reference's per-pair pinv mean
# ---------------------------------------------------------------------------
def _reference_ps_inv(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's ``ps_inv``, written out: rows ``(-1, C)``, a ones column, ``pinv(X) @ Y``."""
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    x1 = torch.ones(x.shape[0], x.shape[1] + 1, dtype=x.dtype)
    x1[:, :-1] = x
    a = (torch.linalg.pinv(x1) @ y).T
    return a[:, :-1], a[:, -1]


def test_share_fit_mean_equals_the_reference_per_pair_pinv_mean(builtin):
    net = _net(builtin)  # windows share layers
    batches = [tiny.images(6, seed=s) for s in range(2)]
    pairs = stitch_pairs(net)
    shared = [k for k, v in pairs.items() if len(v) > 1]
    assert shared
    calibrate(net, batches, share_fit="mean")
    mean_state = {k: (net.stitches[k].weight.clone(), net.stitches[k].bias.clone()) for k in pairs}
    calibrate(net, batches, share_fit="pooled")
    a, b = net.anchors["vit32"], net.anchors["vit48"]
    x = torch.cat(batches)
    for key, pts in pairs.items():
        ws, bs = [], []
        for _src, p, _dst, q in sorted(pts):
            with torch.no_grad():
                w, bias = _reference_ps_inv(a.activations(x, [p])[p].double(), b.activations(x, [q])[q].double())
            ws.append(w)
            bs.append(bias)
        ref_w, ref_b = torch.stack(ws).mean(0), torch.stack(bs).mean(0)
        got_w, got_b = mean_state[key]
        assert torch.allclose(got_w.double(), ref_w, atol=1e-4, rtol=1e-4), key
        assert torch.allclose(got_b.double(), ref_b, atol=1e-4, rtol=1e-4), key
        if key in shared:  # pooling all pairs into one solve is a different solution
            assert not torch.allclose(net.stitches[key].weight.double(), ref_w, atol=1e-3), key


def test_share_fit_is_validated(builtin):
    with pytest.raises(StitchframeError, match=r"share_fit: 'avg' is not one of pooled, mean"):
        calibrate(_net(builtin), [tiny.images(2)], share_fit="avg")


# ---------------------------------------------------------------------------
# ridge: auto, chosen by cross-validation over folds of images
# ---------------------------------------------------------------------------
def _folds(n_per_fold: int, noise: float, seed: int = 0, d: int = 24, k: int = 4) -> list[NormalEquations]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, 3, generator=g, dtype=torch.float64)
    out = []
    for _ in range(k):
        x = torch.randn(n_per_fold, d, generator=g, dtype=torch.float64)
        eq = NormalEquations(d, 3)
        eq.add(x, x @ w + noise * torch.randn(n_per_fold, 3, generator=g, dtype=torch.float64))
        out.append(eq)
    return out


def test_auto_ridge_is_large_for_few_noisy_rows_and_small_for_many_clean_ones():
    few_noisy = choose_ridge(_folds(10, noise=3.0))
    many_clean = choose_ridge(_folds(2000, noise=0.01))
    assert few_noisy >= 0.1 and many_clean <= 1e-4
    assert choose_ridge(_folds(10, 3.0)[:1]) == 0.0  # one fold: nothing held out, the smallest ridge


def test_held_out_error_from_normal_equations_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 24, generator=g, dtype=torch.float64)
    y = x @ torch.randn(24, 3, generator=g, dtype=torch.float64) + 0.5 * torch.randn(30, 3, generator=g,
                                                                                   dtype=torch.float64)
    eq = NormalEquations(24, 3)
    eq.add(x, y)
    w = torch.randn(25, 3, generator=g, dtype=torch.float64)
    # error() is |XW - Y|^2 - |Y|^2, computed from XᵀX and XᵀY only
    direct = float((NormalEquations.augment(x) @ w - y).square().sum() - y.square().sum())
    assert eq.error(w) == pytest.approx(direct, rel=1e-9)


def test_calibrate_with_auto_ridge_records_the_chosen_ridge(builtin):
    net = _net(builtin, space_options={"share": False})
    calibrate(net, [tiny.images(3, seed=s) for s in range(8)], ridge="auto")
    for layer in net.stitches.values():
        assert set(layer.fitted_ridge) >= {"main"}
        assert layer.fitted_ridge["main"] in RIDGE_GRID
    calibrate(net, [tiny.images(3)], ridge=0.01)
    assert all(layer.fitted_ridge["main"] == 0.01 for layer in net.stitches.values())
    with pytest.raises(StitchframeError, match="calibration.ridge: 'big' is not a number or 'auto'"):
        calibrate(net, [tiny.images(2)], ridge="big")


def test_auto_ridge_folds_go_by_image_not_by_batch(builtin):
    """Image i is in fold i % 4 whatever the batching: one batch is cross-validated, and re-batching the same
    images chooses the same ridges and weights."""
    images = tiny.images(24, seed=5)
    one = _net(builtin, space_options={"share": False})
    calibrate(one, [images], ridge="auto")
    split = _net(builtin, space_options={"share": False})
    calibrate(split, [images[:5], images[5:13], images[13:]], ridge="auto")
    for key, layer in one.stitches.items():
        assert layer.fitted_ridge == split.stitches[key].fitted_ridge
        assert torch.allclose(layer.weight, split.stitches[key].weight, atol=1e-5)
    # a single batch now has folds to hold out: the noisy tiny fit is regularised, not the plain solve
    assert any(r != 0.0 for layer in one.stitches.values() for r in layer.fitted_ridge.values())


# ---------------------------------------------------------------------------
# augment: random resized crops and flips of every image batch
# ---------------------------------------------------------------------------
def test_augment_images_crops_and_flips_each_image_reproducibly():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    a = augment_images(x, torch.Generator().manual_seed(0))
    b = augment_images(x, torch.Generator().manual_seed(0))
    c = augment_images(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x)
    # an image that increases along its width: a crop keeps the direction, a flip reverses it
    ramp = torch.linspace(0, 1, 32).expand(16, 3, 32, 32).contiguous()
    out = augment_images(ramp, torch.Generator().manual_seed(3))
    direction = torch.sign(out[:, 0, :, -1].mean(1) - out[:, 0, :, 0].mean(1))
    assert set(direction.tolist()) == {-1.0, 1.0}
    span = out[:, 0, 0, -1] - out[:, 0, 0, 0]  # a crop covers 35-100% of the area: at least ~30% of the width
    assert bool((span.abs() > 0.25).all() and (span.abs() <= 1.0 + 1e-6).all())
    with pytest.raises(StitchframeError, match=r"calibration.augment: needs image batches \[B, C, H, W\]"):
        augment_images(torch.zeros(2, 5, 8), torch.Generator())


def test_calibrate_with_augment_fits_on_every_view(builtin):
    net = _net(builtin, space_options={"share": False})
    plain = calibrate(net, [tiny.images(4)])
    w_plain = {k: v.weight.clone() for k, v in net.stitches.items()}
    views = calibrate(net, [tiny.images(4)], augment=2)
    assert all(views[k] == 3 * plain[k] for k in plain)
    assert all(not torch.equal(w_plain[k], v.weight) for k, v in net.stitches.items())
