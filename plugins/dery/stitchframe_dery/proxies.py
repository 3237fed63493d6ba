"""Training-free proxies that rank assembled networks without training them.

``naswot`` (Mellor et al., "Neural Architecture Search without Training",
ICML 2021), the proxy DeRy ranks reassembled networks by.  Every unit after
a rectifier gives each input a bit (is its pre-activation positive?); a
network that separates inputs well gives them different codes.  With ``c_i``
the binary code of input ``i`` over all ``N_A`` units of the network::

    K_H[i, j] = N_A - hamming(c_i, c_j),   score = log |det K_H|

Units are the inputs of every ReLU-like activation (``relu``, ``gelu``,
``silu``, ``hardswish``, ``leaky_relu``, ``elu``, ``mish``, ``relu6``) met
while the network runs, caught at the ATen level so functional calls count
too; for smooth activations the bit is the sign of the input, as for ReLU.

``jacov`` (Mellor et al. 2020, the first version of the same paper):
the Jacobian of the summed outputs with respect to the network's first
activation, one row per input; with ``σ`` the eigenvalues of the rows'
correlation matrix::

    score = -sum(log(σ + k) + 1 / (σ + k)),   k = 1e-5

It is highest (``-batch``) when every input's local linear map is
uncorrelated with the others'.  Why it suits reassembly: a stitch that
collapses the representation (a badly matched pair of blocks) makes the
downstream Jacobians of different inputs alike, which this score punishes,
and it needs one backward pass, no labels and no change to the weights
(unlike synflow, which would have to replace pretrained weights by their
absolute values and is dominated by parameter count).  The Jacobian is
taken at the stem's output rather than the raw input so it works for any
modality (token ids have no gradient).

Several proxies are combined by their mean rank (:func:`mean_ranks`), since
their scales are unrelated.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stitchframe import SNNet

__all__ = ["ActivationCodes", "jacov_score", "mean_ranks", "naswot_from_kernel", "naswot_kernel", "score_route"]

_aten = torch.ops.aten
_RECTIFIERS = {
    _aten.relu, _aten.relu_, _aten.gelu, _aten.gelu_, _aten.silu, _aten.silu_, _aten.hardswish, _aten.hardswish_,
    _aten.leaky_relu, _aten.leaky_relu_, _aten.elu, _aten.elu_, _aten.mish, _aten.mish_,
}
_HARDTANH = {_aten.hardtanh, _aten.hardtanh_}  # relu6 is hardtanh(0, 6); other bounds are not rectifiers
_CHUNK = 1 << 22  # float32 counts stay exact below 2**24


def naswot_kernel(codes: torch.Tensor) -> torch.Tensor:
    """``K_H = N_A - hamming`` for binary codes ``[B, N_A]`` (float64 ``[B, B]``).

    Uses ``K = 2 C Cᵀ - s 1ᵀ - 1 sᵀ + N_A`` with ``s`` the code sums: agreements
    on ones plus agreements on zeros.
    """
    k = torch.zeros(codes.shape[0], codes.shape[0], dtype=torch.float64, device=codes.device)
    for c in codes.split(_CHUNK, dim=1):
        c = c.to(torch.float32)
        s = c.sum(dim=1, keepdim=True)
        k += (2 * (c @ c.T) - s - s.T + c.shape[1]).to(torch.float64)
    return k


def naswot_from_kernel(k: torch.Tensor) -> float:
    """``log |det K|`` (``-inf`` when singular: two inputs with the same code)."""
    sign, logdet = torch.linalg.slogdet(k.to(torch.float64).cpu())
    return float(logdet) if sign != 0 else -math.inf


class ActivationCodes(TorchDispatchMode):
    """Accumulates the NASWOT kernel of every rectifier run inside the ``with`` block.

    Args:
        batch: Batch size; only activations whose first dimension is the batch count.
    """

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.kernel = torch.zeros(batch, batch, dtype=torch.float64)
        self.units = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in _RECTIFIERS or (packet in _HARDTANH and _lower_bound(args, kwargs) == 0):
            x = args[0]
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == self.batch:
                codes = (x.detach() > 0).flatten(1)
                self.kernel += naswot_kernel(codes).cpu()
                self.units += codes.shape[1]
        return func(*args, **(kwargs or {}))

    def score(self) -> float:
        """NASWOT score of everything seen (``-inf`` when no rectifier ran)."""
        return naswot_from_kernel(self.kernel) if self.units else -math.inf


def _lower_bound(args, kwargs) -> float:
    if kwargs and "min_val" in kwargs:
        return float(kwargs["min_val"])
    return float(args[1]) if len(args) > 1 else -1.0


def jacov_score(jacobians: torch.Tensor, k: float = 1e-5) -> float:
    """Jacobian-covariance score of per-input Jacobians ``[B, ...]`` (``-inf`` when undefined)."""
    j = jacobians.detach().flatten(1).to(torch.float64).cpu()
    if j.shape[0] < 2 or not torch.isfinite(j).all() or (j.std(dim=1) == 0).any():
        return -math.inf
    eig = torch.linalg.eigvalsh(torch.corrcoef(j)).clamp_min(0.0)
    return float(-(torch.log(eig + k) + 1.0 / (eig + k)).sum())


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return _logits(out["logits"] if "logits" in out else next(iter(out.values())))
    return _logits(out[0])


def score_route(net: SNNet, route: int, inputs: Any, batch: int, proxies: Sequence[str]) -> dict[str, float]:
    """Score route ``route`` of ``net`` on one batch of ``inputs`` (``batch`` samples).

    One forward pass (with the activation codes recorded for ``naswot``) and,
    for ``jacov``, one backward pass to the first anchor's stem output.
    Parameter gradients are never accumulated.  ``net`` should be in eval mode.
    """
    stem = net.anchors[net.routes[route].segments[0].anchor].stem
    leaf: dict[str, torch.Tensor] = {}

    def to_leaf(_module, _args, out):
        leaf["x"] = out.detach().requires_grad_(True)
        return leaf["x"]

    jacov = "jacov" in proxies
    codes = ActivationCodes(batch)
    handle = stem.register_forward_hook(to_leaf) if jacov else None
    try:
        with torch.set_grad_enabled(jacov), codes if "naswot" in proxies else contextlib.nullcontext():
            out = _logits(net.forward_route(inputs, route))
    finally:
        if handle is not None:
            handle.remove()
    scores = {}
    if "naswot" in proxies:
        scores["naswot"] = codes.score()
    if jacov:
        (grad,) = torch.autograd.grad(out.float().sum(), leaf["x"])
        scores["jacov"] = jacov_score(grad)
    return scores


def mean_ranks(scores: Sequence[Mapping[str, float]], proxies: Sequence[str]) -> list[float]:
    """Mean over ``proxies`` of each candidate's rank (0: best; ties share the better rank; NaN ranks last).

    A candidate's rank under one proxy is the number of candidates scoring strictly higher.
    """
    total = [0.0] * len(scores)
    for proxy in proxies:
        vals = [s[proxy] if not math.isnan(s[proxy]) else -math.inf for s in scores]
        ordered = sorted(vals)
        for i, v in enumerate(vals):
            total[i] += len(ordered) - bisect.bisect_right(ordered, v)
    return [t / len(proxies) for t in total]
