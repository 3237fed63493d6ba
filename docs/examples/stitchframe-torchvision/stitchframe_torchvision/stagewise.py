"""A stage-aware stitch space (the stitch space of tutorial 3)."""

from __future__ import annotations

import attrs

import stitchframe


# --8<-- [start:options]
@attrs.frozen(kw_only=True)
class StagewiseOptions:
    """Options of the ``stagewise`` space (``stitch.space_options`` in a spec)."""

    stride: int = attrs.field(
        default=1, validator=attrs.validators.ge(1), metadata={"help": "Stitch after every stride-th block."}
    )
    both_ways: bool = attrs.field(
        default=False, metadata={"help": "Also stitch from the larger anchor into the smaller one."}
    )
    include_anchors: bool = attrs.field(default=True, metadata={"help": "Include each anchor alone."})
# --8<-- [end:options]


# --8<-- [start:positions]
def inner_positions_by_stage(anchor) -> dict[int, list[int]]:
    """The anchor's inner cut points (``1..depth-1``) grouped by stage."""
    out: dict[int, list[int]] = {}
    for pos in range(1, anchor.depth):
        out.setdefault(anchor.graph.stage_at(pos), []).append(pos)
    return out


def same_place(i: int, n_front: int, n_end: int) -> int:
    """Index among ``n_end`` cut points at the relative depth of cut point ``i`` of ``n_front``."""
    return max(0, min(n_end - 1, round((i + 1) * n_end / n_front) - 1))
# --8<-- [end:positions]


# --8<-- [start:space]
class StagewiseSpace(stitchframe.StitchSpace):
    """Neighbouring anchors (by FLOPs) stitched inside a stage, at the same relative depth.

    A cut point of the front anchor in stage ``s`` is joined to the end
    anchor's cut point at the same relative place among its stage-``s`` cut
    points; stages the end anchor lacks are skipped.  Each route stitches once.
    """

    Options = StagewiseOptions

    def routes(self, anchors, can_stitch, context=None):
        ordered = sorted(anchors, key=lambda a: a.graph.flops)
        if self.options.include_anchors:
            for a in ordered:
                yield stitchframe.Route.chain((a.name, 0, a.depth), meta={"kind": "anchor"})
        pairs = list(zip(ordered, ordered[1:]))
        if self.options.both_ways:
            pairs += [(large, small) for small, large in pairs]
        for front, end in pairs:
            for p, q in self.cuts(front, end):
                if can_stitch(front.name, p, end.name, q):
                    yield stitchframe.Route.chain(
                        (front.name, 0, p), (end.name, q, end.depth), meta={"kind": "stagewise"}
                    )

    def cuts(self, front, end) -> list[tuple[int, int]]:
        """``(p, q)``: the front anchor's cut point ``p`` and the end anchor's ``q``."""
        theirs = inner_positions_by_stage(end)
        out = []
        for stage, mine in inner_positions_by_stage(front).items():
            if stage not in theirs:
                continue
            for i, p in enumerate(mine):
                if p % self.options.stride == 0:
                    out.append((p, theirs[stage][same_place(i, len(mine), len(theirs[stage]))]))
        return out
# --8<-- [end:space]
