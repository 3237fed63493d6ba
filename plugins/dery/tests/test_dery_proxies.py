"""Training-free proxies: NASWOT, Jacobian covariance, rank aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stitchframe_dery.proxies import ActivationCodes, jacov_score, mean_ranks, naswot_from_kernel, score_route
from torch import nn

from stitchframe import Route, SNNet
from tests import tiny


def _toy(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 3)).eval()


def _direct_naswot(model: nn.Sequential, x: torch.Tensor) -> float:
    """Mellor et al.'s definition, written out: binary codes of every ReLU, K = N_A - Hamming, log|det K|."""
    codes = []
    hooks = [m.register_forward_hook(lambda _m, inp, _o: codes.append((inp[0] > 0).flatten(1).numpy()))
             for m in model if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    c = np.concatenate(codes, axis=1).astype(np.int64)
    n_a = c.shape[1]
    k = np.array([[n_a - np.sum(ci != cj) for cj in c] for ci in c], dtype=np.float64)
    sign, logdet = np.linalg.slogdet(k)
    assert sign > 0
    return float(logdet)


@pytest.mark.parametrize("seed", range(3))
def test_naswot_matches_the_direct_implementation(seed):
    model = _toy(seed)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(seed))
    codes = ActivationCodes(6)
    with torch.no_grad(), codes:
        model(x)
    assert codes.units == 12 + 9
    assert codes.score() == pytest.approx(_direct_naswot(model, x), rel=1e-10)


def test_naswot_sees_functional_and_bounded_rectifiers_only():
    x = torch.randn(4, 10)
    for fn, units in ((F.relu, 10), (F.gelu, 10), (F.relu6, 10), (lambda t: F.hardtanh(t, -1.0, 1.0), 0),
                      (torch.tanh, 0), (lambda t: torch.relu_(t.clone()), 10)):
        codes = ActivationCodes(4)
        with codes:
            fn(x)
        assert codes.units == units, fn


def test_naswot_of_identical_inputs_is_minus_infinity():
    codes = ActivationCodes(3)
    with torch.no_grad(), codes:
        _toy()(torch.ones(3, 5))
    assert codes.score() == -math.inf
    assert naswot_from_kernel(torch.eye(3) * 2) == pytest.approx(3 * math.log(2))


def test_jacov_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    jac = torch.randn(5, 7, generator=g, dtype=torch.float64)
    eig = np.linalg.eigvalsh(np.corrcoef(jac.numpy()))
    expected = -np.sum(np.log(eig + 1e-5) + 1.0 / (eig + 1e-5))
    assert jacov_score(jac) == pytest.approx(expected, rel=1e-9)
    # Uncorrelated Jacobians score best (-batch), identical ones far worse; constant ones are undefined.
    identical = torch.ones(4, 3) * torch.arange(1.0, 4.0)
    assert jacov_score(identical) < -1e5 < jacov_score(torch.randn(4, 400, generator=g)) <= -4 + 1e-3
    assert jacov_score(torch.ones(4, 3)) == -math.inf


def test_mean_ranks():
    scores = [{"a": 3.0, "b": -1.0}, {"a": 1.0, "b": 0.0}, {"a": 3.0, "b": float("nan")}]
    assert mean_ranks(scores, ["a"]) == [0, 2, 0]
    assert mean_ranks(scores, ["a", "b"]) == [0.5, 1.0, 1.0]


def test_score_route_is_reproducible_and_leaves_no_gradients():
    vit = tiny.vit_anchor(tiny.tiny_vit(32, 2, seed=0), "vit")
    net = SNNet([vit], [Route.chain(("vit", 0, 2))], {}).eval()
    x = tiny.images(6, seed=3)
    first = score_route(net, 0, x, 6, ("naswot", "jacov"))
    assert set(first) == {"naswot", "jacov"} and all(math.isfinite(v) for v in first.values())
    assert score_route(net, 0, x, 6, ("naswot", "jacov")) == first
    assert all(p.grad is None for p in net.parameters())
    assert score_route(net, 0, x, 6, ("naswot",)) == {"naswot": first["naswot"]}


def test_jacov_needs_two_inputs():
    assert jacov_score(torch.randn(1, 5)) == -math.inf
