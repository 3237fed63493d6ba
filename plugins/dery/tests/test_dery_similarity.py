"""Linear CKA and pooled features."""

from __future__ import annotations

import pytest
import torch
from stitchframe_dery.similarity import anchor_features, linear_cka, normalized_gram, pool, similarity

from stitchframe import ActivationSpec


def _direct_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s definition on small matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X Xᵀ."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    k, l_ = x.double() @ x.double().T, y.double() @ y.double().T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    return float(hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_)))


@pytest.fixture
def reps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(6, 9, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(20, 9, generator=g, dtype=torch.float64)
    return x, y


def test_cka_matches_the_direct_definition(reps):
    x, y = reps
    assert linear_cka(x, y) == pytest.approx(_direct_cka(x, y), rel=1e-10)
    assert 0.0 < linear_cka(x, y) < 1.0
    # The Gram form used for whole zoos gives the same number.
    assert float((normalized_gram(x) * normalized_gram(y)).sum()) == pytest.approx(_direct_cka(x, y), rel=1e-10)


def test_cka_is_one_for_identical_representations(reps):
    x, _ = reps
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(reps):
    x, y = reps
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x, y @ q) == pytest.approx(base, rel=1e-10)
    assert linear_cka(7.5 * x, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 0.01 * y @ q) == pytest.approx(base, rel=1e-10)
    # Not invariant to a general (anisotropic) linear map: CKA is not a trivially constant score.
    assert linear_cka(x, y * torch.linspace(0.1, 10, 9, dtype=torch.float64)) != pytest.approx(base, rel=1e-3)


def test_cka_of_a_constant_representation_is_zero(reps):
    x, _ = reps
    assert linear_cka(x, torch.ones(20, 3)) == 0.0
    assert torch.equal(normalized_gram(torch.ones(20, 3)), torch.zeros(20, 20, dtype=torch.float64))


def test_pool_per_layout():
    x = torch.randn(2, 5, 4)  # 1 prefix token + a 2x2 grid, 4 channels
    tokens = ActivationSpec(layout="tokens", channels=4, grid=(2, 2), prefix=1)
    assert torch.allclose(pool(x, tokens), x[:, 1:].mean(1).double())
    assert torch.allclose(pool(x, tokens, "all"), x.mean(1).double())
    m = torch.randn(2, 4, 3, 3)
    assert torch.allclose(pool(m, ActivationSpec(layout="map", channels=4, grid=(3, 3))), m.mean((2, 3)).double())
    assert torch.allclose(
        pool(m.permute(0, 2, 3, 1), ActivationSpec(layout="nhwc", channels=4, grid=(3, 3))), m.mean((2, 3)).double()
    )
    seq = ActivationSpec(layout="sequence", channels=4, length=None)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool(x, seq, mask=mask)
    assert torch.allclose(pooled[0], x[0, :2].mean(0).double()) and torch.allclose(pooled[1], x[1].mean(0).double())


def test_features_come_from_one_pass_and_match_the_activations(mixed_zoo, probe):
    cnn, vit = mixed_zoo[0], mixed_zoo[1]
    for anchor in (cnn, vit):
        feats = anchor_features(anchor, probe)
        assert len(feats) == anchor.depth + 1
        with torch.no_grad():
            acts = [anchor.activations(b, list(anchor.graph.positions())) for b in probe]
        for p, f in enumerate(feats):
            expected = torch.cat([pool(a[p], anchor.graph.spec_at(p)) for a in acts])
            assert f.shape == (16, anchor.graph.spec_at(p).channels)
            assert torch.allclose(f, expected, atol=1e-6)


def test_similarity_matrix_holds_every_pairwise_cka(mixed_zoo, probe):
    sim = similarity(mixed_zoo[:2], probe)
    cnn, vit = mixed_zoo[0], mixed_zoo[1]
    fc, fv = anchor_features(cnn, probe), anchor_features(vit, probe)
    assert sim.samples == 16
    assert sim.matrix.shape == (cnn.depth + vit.depth + 2,) * 2
    assert torch.allclose(sim.matrix, sim.matrix.T)
    assert sim.cka("cnn16", 2, "vit32", 3) == pytest.approx(linear_cka(fc[2], fv[3]), rel=1e-9)
    assert sim.cka("vit32", 1, "vit32", 1) == pytest.approx(1.0)
    assert sim.block("cnn16", "vit32", cnn.depth, vit.depth).shape == (cnn.depth + 1, vit.depth + 1)
