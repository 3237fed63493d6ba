"""The ``cross`` stitch space: routes across anchors of different families.

SN-Net's ``snnet`` space pairs block ``i`` of one anchor with the block at the
same relative depth of a neighbour of the same family, inside a stage.  Across
families (a CNN into a ViT, Swin into a ViT, a small BERT into a large one,
timm's ViT into Hugging Face's) block indices mean little: depths, stage
layouts and the cost of each block differ.  This space matches cut points by
how much of each network's work is done there instead.

Rules (all visible in :class:`CrossOptions`):

1. **Pairs.**  Anchors are ordered by total FLOPs.  ``pairs: all`` considers
   every pair, ``pairs: neighbours`` only consecutive ones;
   ``cross_family_only`` skips pairs whose anchors report the same
   ``family``.
2. **Directions.**  ``up`` routes start in the cheaper anchor and finish in
   the costlier one (SN-Net's fast-to-slow stitching); ``down`` routes go the
   other way (SN-Netv2's large-to-small).  Every route has two segments: the
   front anchor's stem and blocks ``0..p-1``, one stitching layer, then the
   end anchor's blocks ``q..depth-1`` and head.
3. **Cut fractions.**  Each cut position ``p`` gets the fraction of the
   anchor's trunk (stem plus blocks, no head) done there: by cumulative FLOPs
   (``match: flops``, the default) or by block count (``match: depth``).
   Only inner positions are candidates: the front runs at least one block
   and the end runs at least one block.
4. **Matching.**  For every front position ``p`` the end position ``q``
   with the nearest fraction is chosen among those the stitching layer can
   bridge (``can_stitch``: a sequence never meets a spatial activation); the
   pair is dropped when the fractions differ by more than ``tolerance``.
5. **FLOPs order.**  With ``between`` (default) a route is kept only when
   its FLOPs (stitching layer excluded) lie strictly between the two
   anchors' FLOPs; a route outside that range costs at least as much as the
   costlier anchor or no less than the cheaper one, and is dominated.
   Anchors of equal or about equal cost (timm's ViT-S and Hugging Face's)
   leave no room in between: turn ``between`` off for them.
6. **Thinning.**  At most ``points`` stitch points are kept per ordered pair
   of anchors, spread evenly over the matches (ordered by front depth, the
   shallowest and deepest kept).

Each stitch point gets its own stitching layer (heterogeneous pairs rarely
share activation specs).  Routes carry ``meta["kind"]`` ``"up"`` or
``"down"``; anchors alone are included with kind ``"anchor"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs

from .hookspecs import hookimpl
from .routes import Route
from .stitch_spaces import AnchorsSpace, CanStitch, StitchSpace, by_flops

__all__ = ["CrossOptions", "CrossSpace", "cut_fractions", "match_cut_points"]

_v = attrs.validators


@attrs.frozen(kw_only=True)
class CrossOptions:
    """Options of the ``cross`` space."""

    pairs: Literal["all", "neighbours"] = attrs.field(
        default="all",
        validator=_v.in_(("all", "neighbours")),
        metadata={"help": "Which anchor pairs to stitch: all, or neighbours in FLOPs order."},
    )
    directions: tuple[str, ...] = attrs.field(
        default=("up", "down"),
        converter=tuple,
        validator=_v.deep_iterable(_v.in_(("up", "down"))),
        metadata={"help": "up: cheaper anchor first (small->large); down: costlier anchor first (large->small)."},
    )
    points: int | None = attrs.field(
        default=4,
        validator=_v.optional([_v.instance_of(int), _v.ge(1)]),
        metadata={"help": "At most this many stitch points per ordered anchor pair (null: every match)."},
    )
    match: Literal["flops", "depth"] = attrs.field(
        default="flops",
        validator=_v.in_(("flops", "depth")),
        metadata={"help": "Match cut points by cumulative FLOPs fraction or by relative depth."},
    )
    tolerance: float = attrs.field(
        default=0.2,
        validator=[_v.ge(0.0), _v.le(1.0)],
        metadata={"help": "Largest allowed difference between the two cut points' fractions."},
    )
    between: bool = attrs.field(
        default=True,
        metadata={"help": "Keep only routes whose FLOPs lie strictly between the two anchors' (off for equal-cost pairs)."},
    )
    cross_family_only: bool = attrs.field(
        default=False, metadata={"help": "Skip pairs of anchors that report the same family."}
    )
    include_anchors: bool = attrs.field(default=True, metadata={"help": "Include each anchor alone."})


def cut_fractions(anchor: Any, match: str = "flops") -> list[float]:
    """Fraction of an anchor's trunk (stem + blocks) done at each cut position ``0..depth``.

    Args:
        anchor: An anchor (``depth`` and ``graph`` are read).
        match: ``"flops"`` (cumulative FLOPs) or ``"depth"`` (block count).
            FLOPs fall back to depth when the graph reports none.
    """
    g = anchor.graph
    total = g.stem.flops + g.flops_between(0, g.depth)
    if match == "depth" or total <= 0:
        return [p / g.depth for p in g.positions()]
    done = g.stem.flops
    out = [done / total]
    for block in g.blocks:
        done += block.flops
        out.append(done / total)
    return out


def _route_flops(front: Any, p: int, end: Any, q: int) -> int:
    f, e = front.graph, end.graph
    return f.stem.flops + f.flops_between(0, p) + e.flops_between(q, e.depth) + e.head.flops


def _spread(items: list, k: int | None) -> list:
    """At most ``k`` items spread evenly over the list (ends included)."""
    if k is None or len(items) <= k:
        return items
    if k == 1:
        return [items[len(items) // 2]]
    picks = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in picks]


def match_cut_points(front: Any, end: Any, can_stitch: CanStitch, options: CrossOptions) -> list[tuple[int, int]]:
    """Stitch points ``(p, q)`` from ``front`` (leaving after block ``p-1``) into ``end`` (entering at block ``q``).

    Applies rules 3-6 of the module docstring.
    """
    ff, fe = cut_fractions(front, options.match), cut_fractions(end, options.match)
    lo, hi = sorted((front.graph.flops, end.graph.flops))
    found = []
    for p in range(1, front.depth):
        best = None
        for q in range(1, end.depth):
            gap = abs(fe[q] - ff[p])
            if gap > options.tolerance or (best is not None and gap >= best[0]):
                continue
            if can_stitch(front.name, p, end.name, q):
                best = (gap, q)
        if best is None:
            continue
        q = best[1]
        if options.between and not lo < _route_flops(front, p, end, q) < hi:
            continue
        found.append((p, q))
    return _spread(found, options.points)


class CrossSpace(StitchSpace):
    """Two-segment routes across anchors of any families, matched by FLOPs fraction or depth."""

    Options = CrossOptions

    def _pairs(self, ordered: Sequence[Any]) -> list[tuple[Any, Any]]:
        n = len(ordered)
        if self.options.pairs == "neighbours":
            idx = [(i, i + 1) for i in range(n - 1)]
        else:
            idx = [(i, j) for i in range(n) for j in range(i + 1, n)]
        out = []
        for i, j in idx:
            a, b = ordered[i], ordered[j]
            if self.options.cross_family_only and a.family and a.family == b.family:
                continue
            out.append((a, b))
        return out

    def routes(self, anchors: Sequence[Any], can_stitch: CanStitch, context: Any = None) -> Iterable[Route]:
        o = self.options
        ordered = by_flops(anchors)
        if o.include_anchors:
            yield from AnchorsSpace().routes(ordered, can_stitch)
        for small, large in self._pairs(ordered):
            for kind, front, end in (("up", small, large), ("down", large, small)):
                if kind not in o.directions:
                    continue
                for p, q in match_cut_points(front, end, can_stitch, o):
                    yield Route.chain((front.name, 0, p), (end.name, q, end.depth), meta={"kind": kind})


@hookimpl
def stitchframe_register_stitch_spaces(register) -> None:
    """Register the ``cross`` stitch space."""
    register("cross", CrossSpace)
