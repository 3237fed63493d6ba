"""Partitioning every anchor into K stages whose boundaries match across the zoo.

DeRy groups blocks into *equivalence sets*: stage ``k`` of one network can
replace stage ``k`` of another.  Here a stage is a block range between two
cut points, so the partition is a choice of ``K - 1`` inner cut points per
anchor, made so that the cut points of boundary ``k`` carry similar
representations (high CKA) in every anchor:

1. The **reference** anchor (the costliest, or the one named) is cut into K
   stages of about equal FLOPs: boundary ``k`` at the inner cut point whose
   cumulative trunk FLOPs fraction is nearest ``k / K``.
2. Every other anchor is cut where its representations match the
   reference's boundaries best: the increasing cut points ``q_1 < ... <
   q_{K-1}`` maximising ``sum_k CKA(ref@r_k, anchor@q_k)`` (dynamic programming).
3. ``align_rounds`` rounds of coordinate ascent: each non-reference anchor in
   turn re-chooses its cut points to maximise its CKA to the reference's *and*
   all other anchors' current boundaries, so boundaries agree across the
   whole zoo, not only with the reference.  The reference stays fixed, which
   keeps stages balanced (boundaries cannot all drift to the early layers,
   where every network looks alike).

Every stage holds at least one block; the stem belongs to stage 0 and the
head to stage K-1.  The partition is a deterministic function of the
similarity matrix and the block graphs (ties go to the earliest cut points).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from stitchframe import Anchor, SpecError

from .similarity import Similarity

__all__ = ["Partition", "best_cuts", "eligible", "flops_cuts", "partition"]


@attrs.frozen
class Partition:
    """K-stage cut points of every anchor.

    Attributes:
        stages: K.
        cuts: ``anchor -> (0, c_1, ..., c_{K-1}, depth)``; stage ``k`` is
            blocks ``cuts[k]..cuts[k+1]-1``.
        reference: The reference anchor.
        skipped: Anchors with fewer than K blocks (left out of assemblies).
        score: Mean CKA over all pairs of anchors and all boundaries.
    """

    stages: int
    cuts: dict[str, tuple[int, ...]]
    reference: str
    skipped: tuple[str, ...] = ()
    score: float = 0.0

    def stage(self, anchor: str, k: int) -> tuple[int, int]:
        """Block range ``(start, end)`` of stage ``k`` of ``anchor``."""
        c = self.cuts[anchor]
        return c[k], c[k + 1]


def best_cuts(gain: torch.Tensor) -> tuple[int, ...]:
    """Increasing inner cut points maximising ``sum_k gain[k, q_k]``.

    Args:
        gain: ``[K-1, depth+1]`` score of putting boundary ``k`` at cut
            point ``q``; only ``1..depth-1`` are eligible (every stage keeps a
            block).

    Returns:
        ``(q_1, ..., q_{K-1})`` with ``1 <= q_1 < ... < q_{K-1} <= depth-1``;
        ties go to the earliest cut points.
    """
    nb, width = gain.shape
    depth = width - 1
    g = gain.to(torch.float64).tolist()
    neg = float("-inf")
    best = [[neg] * width for _ in range(nb)]
    back = [[0] * width for _ in range(nb)]
    for q in range(1, depth - nb + 1):
        best[0][q] = g[0][q]
    for k in range(1, nb):
        run, arg = neg, 0
        for q in range(k + 1, depth - nb + k + 1):
            if best[k - 1][q - 1] > run:
                run, arg = best[k - 1][q - 1], q - 1
            best[k][q], back[k][q] = run + g[k][q], arg
    q = max(range(nb, depth), key=lambda j: (best[nb - 1][j], -j))
    cuts = [q]
    for k in range(nb - 1, 0, -1):
        q = back[k][q]
        cuts.append(q)
    return tuple(reversed(cuts))


def _trunk_fractions(anchor: Anchor) -> list[float]:
    g = anchor.graph
    done = [float(g.stem.flops)]
    for b in g.blocks:
        done.append(done[-1] + b.flops)
    total = done[-1] or 1.0
    return [d / total for d in done]


def flops_cuts(anchor: Anchor, stages: int) -> tuple[int, ...]:
    """Inner cut points splitting ``anchor`` into ``stages`` parts of about equal FLOPs."""
    frac = torch.tensor(_trunk_fractions(anchor), dtype=torch.float64)
    targets = torch.arange(1, stages, dtype=torch.float64).unsqueeze(1) / stages
    return best_cuts(-(frac.unsqueeze(0) - targets).abs())


def _gain(sim: Similarity, anchor: Anchor, others: dict[str, tuple[int, ...]], stages: int) -> torch.Tensor:
    gain = torch.zeros(stages - 1, anchor.depth + 1, dtype=torch.float64)
    for other, cuts in others.items():
        for k in range(1, stages):
            row = sim.index[(other, cuts[k])]
            cols = [sim.index[(anchor.name, q)] for q in range(anchor.depth + 1)]
            gain[k - 1] += sim.matrix[row, cols]
    return gain


def _mean_boundary_cka(sim: Similarity, cuts: dict[str, tuple[int, ...]], stages: int) -> float:
    names = list(cuts)
    vals = [
        sim.cka(a, cuts[a][k], b, cuts[b][k])
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        for k in range(1, stages)
    ]
    return sum(vals) / len(vals) if vals else 1.0


def eligible(anchors: Sequence[Anchor], stages: int, reference: str | None = None,
             where: str = "stitch.space_options") -> tuple[list[Anchor], Anchor]:
    """The anchors with at least ``stages`` blocks, and the reference among them.

    Raises:
        SpecError: ``reference`` is not an anchor or is too shallow, or no anchor has ``stages`` blocks.
    """
    names = [a.name for a in anchors]
    if reference is not None and reference not in names:
        raise SpecError(f"{where}.reference: {reference!r} is not an anchor; anchors: {', '.join(names)}")
    fit = [a for a in anchors if a.depth >= stages]
    if not fit:
        depths = ", ".join(f"{a.name} ({a.depth})" for a in anchors)
        raise SpecError(f"{where}.stages: {stages} stages need anchors of at least {stages} blocks; got {depths}")
    if reference is None:
        return fit, max(fit, key=lambda a: (a.graph.flops, -names.index(a.name)))
    ref = anchors[names.index(reference)]
    if ref.depth < stages:
        raise SpecError(f"{where}.reference: {reference!r} has {ref.depth} blocks, fewer than stages={stages}")
    return fit, ref


def partition(
    anchors: Sequence[Anchor],
    sim: Similarity,
    stages: int,
    *,
    reference: str | None = None,
    align_rounds: int = 2,
    where: str = "stitch.space_options",
) -> Partition:
    """Cut every anchor into ``stages`` stages aligned by CKA (see the module docstring).

    ``sim`` must cover every anchor with at least ``stages`` blocks.

    Raises:
        SpecError: As :func:`eligible`.
    """
    fit, ref = eligible(anchors, stages, reference, where)
    full = {ref.name: (0, *flops_cuts(ref, stages), ref.depth)}
    for a in fit:
        if a is not ref:
            full[a.name] = (0, *best_cuts(_gain(sim, a, {ref.name: full[ref.name]}, stages)), a.depth)
    for _ in range(align_rounds):
        changed = False
        for a in fit:
            if a is ref:
                continue
            new = (0, *best_cuts(_gain(sim, a, {n: c for n, c in full.items() if n != a.name}, stages)), a.depth)
            changed |= new != full[a.name]
            full[a.name] = new
        if not changed:
            break
    ordered = {a.name: full[a.name] for a in fit}
    skipped = tuple(a.name for a in anchors if a.depth < stages)
    return Partition(stages, ordered, ref.name, skipped, _mean_boundary_cka(sim, ordered, stages))
