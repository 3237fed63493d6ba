"""Functional similarity of cut points: linear CKA of pooled activations.

Every cut point of every anchor is summarised by its activation on the probe
inputs, pooled to one vector per sample (global average over the grid for
feature maps, mean over tokens for ViTs and text).  Two cut points are
functionally similar when their pooled representations have a high linear
CKA (Kornblith et al. 2019)::

    CKA(X, Y) = <Kc, Lc>_F / (|Kc|_F |Lc|_F),   K = X Xᵀ, Kc = H K H

with ``H`` the centring matrix.  CKA is 1 for identical representations and
invariant to orthogonal transforms and isotropic scaling, so cut points of
different widths and families compare directly.

Cost: one pass per anchor over the probe batches, running the blocks one
after another and pooling each activation as soon as it is produced (one
activation alive at a time).  Only the pooled features of one anchor
(``samples x channels`` per cut point) are kept during its pass; they are
turned into centred, normalised ``samples x samples`` Gram matrices, and all
pairwise CKAs are one matrix product of those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from stitchframe import ActivationSpec, Anchor

__all__ = ["Similarity", "anchor_features", "linear_cka", "normalized_gram", "pool", "similarity"]


def pool(x: torch.Tensor, spec: ActivationSpec, token_pool: str = "patches", mask: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sample from an activation: ``[B, C]`` in float64.

    Args:
        x: The activation, laid out as ``spec`` says.
        spec: Its activation spec.
        token_pool: For ``tokens``: ``patches`` averages the patch tokens only
            (cls/distillation/register tokens left out, like a CNN's global
            average pool), ``all`` averages every token.
        mask: ``[B, L]`` validity mask for ``sequence`` activations (padding
            left out of the mean).
    """
    x = x.detach().to(torch.float64)
    if spec.layout == "map":
        return x.mean(dim=(2, 3))
    if spec.layout == "nhwc":
        return x.mean(dim=(1, 2))
    if spec.layout == "tokens":
        return (x[:, spec.prefix :] if token_pool == "patches" else x).mean(dim=1)
    if mask is not None and mask.shape == x.shape[:2]:
        w = mask.to(x.device, torch.float64).unsqueeze(-1)
        return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
    return x.mean(dim=1)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations ``[n, d1]`` and ``[n, d2]`` of the same ``n`` samples.

    The feature-space form ``|Ycᵀ Xc|²_F / (|Xcᵀ Xc|_F |Ycᵀ Yc|_F)`` on centred
    features; 0 when either representation is constant.
    """
    x = x.to(torch.float64) - x.to(torch.float64).mean(dim=0)
    y = y.to(torch.float64) - y.to(torch.float64).mean(dim=0)
    denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if denom <= 0:
        return 0.0
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / denom)


def normalized_gram(features: torch.Tensor) -> torch.Tensor:
    """Centred linear Gram matrix ``H X Xᵀ H`` scaled to unit Frobenius norm (zero if constant).

    The CKA of two representations is the Frobenius inner product of their
    normalised Grams.
    """
    x = features.to(torch.float64)
    x = x - x.mean(dim=0)
    k = x @ x.T
    norm = torch.linalg.matrix_norm(k)
    return k / norm if norm > 0 else torch.zeros_like(k)


def move_to(obj: Any, device: torch.device) -> Any:
    """``obj`` (a tensor, or tensors in a mapping or sequence) on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return obj.to(device) if hasattr(obj, "to") else type(obj)({k: move_to(v, device) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def _device(anchor: Anchor) -> torch.device:
    p = next(anchor.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def anchor_features(anchor: Anchor, batches: Iterable[Any], token_pool: str = "patches") -> list[torch.Tensor]:
    """Pooled features ``[n, C_p]`` (float64, CPU) at every cut point ``0..depth`` of one anchor.

    One pass over ``batches`` (model inputs) in eval mode; each block's
    output is pooled as soon as it is produced.  Every module's mode is
    restored afterwards.
    """
    graph, device = anchor.graph, _device(anchor)
    specs = [graph.spec_at(p) for p in graph.positions()]
    chunks: list[list[torch.Tensor]] = [[] for _ in specs]
    modes = [(m, m.training) for m in anchor.modules()]
    anchor.eval()
    try:
        for inputs in batches:
            inputs = move_to(inputs, device)
            mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
            ctx = anchor.prepare(inputs)
            x = anchor.run_stem(inputs, ctx)
            chunks[0].append(pool(x, specs[0], token_pool, mask).cpu())
            for i in range(anchor.depth):
                x = anchor.run_blocks(x, i, i + 1, ctx)
                chunks[i + 1].append(pool(x, specs[i + 1], token_pool, mask).cpu())
    finally:
        for m, mode in modes:
            m.training = mode
    return [torch.cat(c) for c in chunks]


@attrs.frozen
class Similarity:
    """Linear CKA between every pair of cut points of a set of anchors.

    Attributes:
        index: ``(anchor, position) -> row`` of :attr:`matrix`.
        matrix: ``[P, P]`` CKA values (symmetric, 1 on the diagonal except for
            constant representations).
        samples: Number of probe samples it was computed on.
    """

    index: dict[tuple[str, int], int]
    matrix: torch.Tensor
    samples: int

    def cka(self, a: str, p: int, b: str, q: int) -> float:
        """CKA between cut point ``p`` of anchor ``a`` and cut point ``q`` of anchor ``b``."""
        return float(self.matrix[self.index[(a, p)], self.index[(b, q)]])

    def block(self, a: str, b: str, depth_a: int, depth_b: int) -> torch.Tensor:
        """``[depth_a + 1, depth_b + 1]`` CKA of every cut point of ``a`` with every one of ``b``."""
        rows = [self.index[(a, p)] for p in range(depth_a + 1)]
        cols = [self.index[(b, q)] for q in range(depth_b + 1)]
        return self.matrix[rows][:, cols]


def similarity(anchors: Sequence[Anchor], batches: Sequence[Any], token_pool: str = "patches") -> Similarity:
    """CKA between all cut points of ``anchors`` on the probe ``batches`` (a re-iterable of model inputs)."""
    grams, index = [], {}
    samples = 0
    for anchor in anchors:
        feats = anchor_features(anchor, batches, token_pool)
        samples = feats[0].shape[0]
        for p, f in enumerate(feats):
            index[(anchor.name, p)] = len(grams)
            grams.append(normalized_gram(f).flatten())
        del feats
    stacked = torch.stack(grams)
    return Similarity(index=index, matrix=stacked @ stacked.T, samples=samples)
