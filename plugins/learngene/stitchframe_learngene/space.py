"""The ``learngene`` stitch space: stitch where two anchors sit at the same depth of the teacher.

Students of a pool are aligned with their teacher position by position
(:func:`~stitchframe_learngene.transforms.aligned_position`); their learned
transformations compose exactly where two students map to the *same* teacher
position.  This space offers those stitches only: anchors are ordered by
FLOPs, and for each pair (neighbours, or every pair with ``nearest: false``)
it yields ``front[0:p] -> end[q:]`` for every ``p >= 1`` and ``q < end.depth``
whose teacher positions are equal, small-to-large (``sl``) and/or
large-to-small (``ls``).  Anchors outside a pool are placed by relative depth
(``p / depth``) instead.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations, pairwise

import attrs

from stitchframe import AnchorsSpace, Route, StitchSpace, by_flops


__all__ = ["LearngeneSpace", "LearngeneSpaceOptions", "relative_depth"]

_v = attrs.validators


@attrs.frozen(kw_only=True)
class LearngeneSpaceOptions:
    """Options of the ``learngene`` stitch space."""

    directions: tuple[str, ...] = attrs.field(
        default=("sl", "ls"),
        converter=tuple,
        validator=_v.deep_iterable(_v.in_(("sl", "ls"))),
        metadata={"help": "sl: smaller anchor first, then the larger; ls: larger first, then the smaller."},
    )
    nearest: bool = attrs.field(
        default=True, metadata={"help": "Stitch only neighbours in FLOPs order; false: every pair of anchors."}
    )
    include_anchors: bool = attrs.field(default=True, metadata={"help": "Include each anchor alone."})


def relative_depth(anchor, pos: int) -> Fraction:
    """Where cut position ``pos`` sits in the teacher (pool anchors) or in the anchor itself, as a fraction."""
    from .transforms import PoolTransforms  # torch: imported when routes are made, not when the plugin registers

    t = getattr(anchor, "learngene", None)
    if isinstance(t, PoolTransforms) and t.teacher_positions[-1] > 0:
        return Fraction(t.teacher_positions[pos], t.teacher_positions[-1])
    return Fraction(pos, anchor.depth)


class LearngeneSpace(StitchSpace):
    """Stitches between anchors at equal teacher depth (see the module docstring)."""

    Options = LearngeneSpaceOptions

    def _links(self, front, end, can_stitch) -> list[tuple[int, int]]:
        out = []
        for p in range(1, front.depth + 1):
            for q in range(end.depth):
                if relative_depth(front, p) == relative_depth(end, q) and can_stitch(front.name, p, end.name, q):
                    out.append((p, q))
        return out

    def routes(self, anchors, can_stitch, context=None):
        o = self.options
        ordered = by_flops(anchors)
        if o.include_anchors:
            yield from AnchorsSpace().routes(ordered, can_stitch)
        pairs = pairwise(ordered) if o.nearest else combinations(ordered, 2)
        for small, large in pairs:
            for kind, front, end in (("sl", small, large), ("ls", large, small)):
                if kind not in o.directions:
                    continue
                for p, q in self._links(front, end, can_stitch):
                    yield Route.chain((front.name, 0, p), (end.name, q, end.depth), meta={"kind": kind})
