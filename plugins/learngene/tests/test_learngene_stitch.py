"""The learngene stitching layer and stitch space, on toy anchors with known transformations."""

from __future__ import annotations

import pytest
import torch
from _learngene_cases import PREPROCESS, toy_model
from stitchframe_learngene import LearngeneStitch, PoolTransforms, compose, relative_depth, vit_anchor

import stitchframe
from stitchframe import ActivationSpec
from stitchframe.testing import check_stitch_layer


def _transforms(anchor, teacher_depth: int, *, pool: str = "pool", width: int = 40, seed: int = 0) -> PoolTransforms:
    """Random but well-conditioned maps for every position of ``anchor``."""
    g = torch.Generator().manual_seed(seed)
    c = anchor.graph.spec_at(0).channels
    pos = tuple(int(p * teacher_depth / anchor.depth + 0.5) for p in anchor.graph.positions())

    def rand(rows, cols):
        return torch.randn(rows, cols, generator=g, dtype=torch.float64) / cols**0.5, torch.randn(
            rows, generator=g, dtype=torch.float64
        )

    return PoolTransforms(
        pool=pool,
        teacher_positions=pos,
        to_teacher=tuple(rand(width, c) for _ in pos),
        from_teacher=tuple(rand(c, width) for _ in pos),
    )


def _student(dim: int, depth: int, seed: int, teacher_depth: int = 4, **kw):
    torch.manual_seed(seed)
    anchor = vit_anchor(toy_model(dim, depth), f"v{dim}_{depth}", preprocess=PREPROCESS)
    anchor.learngene = _transforms(anchor, teacher_depth, seed=seed, **kw)
    return anchor


def _images(n=16, seed=3):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_compose_goes_through_teacher_space():
    a, b = _student(16, 2, 0), _student(32, 4, 1)
    w, bias = compose(a.learngene, 1, b.learngene, 2, "reverse")
    (wi, bi), (rj, cj) = a.learngene.to_teacher[1], b.learngene.from_teacher[2]
    x = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(x @ w.T + bias, (x @ wi.T + bi) @ rj.T + cj)
    # pinv: the destination's own features come back exactly through its student->teacher map
    w, bias = compose(b.learngene, 2, b.learngene, 2, "pinv")
    torch.testing.assert_close(w, torch.eye(32, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(bias, torch.zeros(32, dtype=torch.float64), atol=1e-8, rtol=0)
    other = _student(32, 4, 2, pool="another teacher")
    assert compose(a.learngene, 1, other.learngene, 2) is None


@pytest.mark.parametrize("via", ["reverse", "pinv"])
def test_layers_are_initialised_from_the_transformations_and_kept_by_calibration(regs, via):
    a, b = _student(16, 2, 0), _student(32, 4, 1)
    net = stitchframe.build_snnet(
        [a, b], space="learngene", layer="learngene", layer_options={"via": via}, registries=regs
    )
    assert len(net.stitches) == 2  # s->l and l->s at teacher position 2
    for route in net.routes:
        for i, (src, p, dst, q, _link) in enumerate(route.stitch_points()):
            layer = net.stitch_for(route, i)
            w, bias = compose(net.anchors[src].learngene, p, net.anchors[dst].learngene, q, via)
            assert layer.from_transforms
            torch.testing.assert_close(layer.weight, w.float())
            torch.testing.assert_close(layer.bias, bias.float())
    before = {k: v.clone() for k, v in net.stitches.state_dict().items()}
    stitchframe.calibrate(net, [_images()])
    assert all(torch.equal(before[k], v) for k, v in net.stitches.state_dict().items())


def test_calibrate_true_lets_least_squares_refit(regs):
    a, b = _student(16, 2, 0), _student(32, 4, 1)
    net = stitchframe.build_snnet(
        [a, b], space="learngene", layer="learngene", layer_options={"calibrate": True}, registries=regs
    )
    ls = stitchframe.build_snnet([a, b], space="learngene", layer="linear", registries=regs)
    stitchframe.calibrate(net, [_images()])
    stitchframe.calibrate(ls, [_images()])
    for key, layer in net.stitches.items():
        torch.testing.assert_close(layer.weight, ls.stitches[key].weight)


def test_anchors_without_transformations_fall_back_to_least_squares(regs):
    a = _student(16, 2, 0)
    torch.manual_seed(5)
    plain = vit_anchor(toy_model(32, 4), "plain", preprocess=PREPROCESS)  # no .learngene
    net = stitchframe.build_snnet([a, plain], space="learngene", layer="learngene", registries=regs)
    assert net.stitches and not any(layer.from_transforms for layer in net.stitches.values())
    rows = stitchframe.calibrate(net, [_images()])
    assert all(n > 0 for n in rows.values())


def test_a_shared_layer_gets_the_mean_of_its_compositions(regs):
    a, b = _student(16, 4, 0), _student(32, 4, 1)
    net = stitchframe.build_snnet([a, b], space="snnet", layer="learngene", registries=regs)
    key, layer = next((k, v) for k, v in net.stitches.items() if k.endswith("#w1"))
    joins = sorted({(s, p, d, q) for r in net.routes for s, p, d, q, link in r.stitch_points() if link.key == key})
    assert len(joins) > 1
    maps = [compose(net.anchors[s].learngene, p, net.anchors[d].learngene, q) for s, p, d, q in joins]
    torch.testing.assert_close(layer.weight, torch.stack([w for w, _ in maps]).mean(0).float())


def test_the_space_stitches_where_teacher_positions_are_equal(regs):
    small, large = _student(16, 2, 0, teacher_depth=6), _student(32, 3, 1, teacher_depth=6)
    assert [relative_depth(small, p) for p in range(3)] == [0, 0.5, 1]
    assert [relative_depth(large, p) for p in range(4)] == [0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1]
    net = stitchframe.build_snnet([large, small], space="learngene", layer="learngene", registries=regs)
    assert [r.describe() for r in net.routes] == ["v16_2[0:2]", "v32_3[0:3]"]  # no position shared but 0 and the end

    small, large = _student(16, 2, 0), _student(32, 4, 1)
    net = stitchframe.build_snnet([large, small], space="learngene", layer="learngene", registries=regs)
    assert [r.describe() for r in net.routes] == [
        "v16_2[0:2]",
        "v32_4[0:4]",
        "v16_2[0:1] -> learngene -> v32_4[2:4]",
        "v32_4[0:2] -> learngene -> v16_2[1:2]",
    ]
    net = stitchframe.build_snnet(
        [large, small], space="learngene", space_options={"directions": ["sl"]}, registries=regs
    )
    assert [r.meta["kind"] for r in net.routes] == ["anchor", "anchor", "sl"]


def test_the_space_places_anchors_outside_a_pool_by_relative_depth(regs):
    torch.manual_seed(0)
    a = vit_anchor(toy_model(16, 2), "a", preprocess=PREPROCESS)
    b = vit_anchor(toy_model(32, 4), "b", preprocess=PREPROCESS)
    net = stitchframe.build_snnet([a, b], space="learngene", registries=regs)
    assert "a[0:1] -> linear -> b[2:4]" in [r.describe() for r in net.routes]


@pytest.mark.parametrize(
    "src, dst",
    [
        (
            ActivationSpec(layout="tokens", channels=12, grid=(4, 4), prefix=1),
            ActivationSpec(layout="tokens", channels=20, grid=(4, 4), prefix=1),
        ),
        (
            ActivationSpec(layout="tokens", channels=12, grid=(4, 4), prefix=1),
            ActivationSpec(layout="map", channels=6, grid=(2, 2)),
        ),
    ],
)
def test_the_layer_passes_the_conformance_kit(src, dst):
    """Without transformations (the kit has none) it is a least-squares linear stitch."""
    check_stitch_layer(LearngeneStitch, src, dst)
