"""Stitch spaces: generators of the routes an SN-Net offers.

A stitch space is constructed as ``cls(options)`` and asked for routes with
``space.routes(anchors, can_stitch, context=context)``:

* ``anchors`` - the loaded :class:`~stitchframe.Anchor` objects in spec
  order (each has ``name``, ``depth`` and ``graph``);
* ``can_stitch(src, src_pos, dst, dst_pos)`` - true when the chosen stitching
  layer can bridge those two cut points (the space should skip pairs it
  cannot);
* ``context`` - a :class:`SpaceContext`: probe inputs, a factory of the
  stitching layers the engine will build, the seed and the final-norm policy,
  for spaces that choose routes by running the anchors (DeRy-style
  reassembly ranks candidates on data).  Spaces that do not need it ignore
  it; declare it ``context=None`` so the space can also be called directly.

Built-ins (this module is also the plugin that registers them):

* ``anchors`` - every anchor alone;
* ``snnet`` - SN-Net v1: anchors ordered by FLOPs, neighbours stitched
  small-to-large with a sliding window over blocks (``kernel``, ``stride``),
  nearest relative depth when depths differ, one layer shared per window;
* ``snnet2`` - SN-Netv2 two-way stitching between neighbours: small->large,
  large->small, small->large->small and large->small->large.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any, Protocol

import attrs

from .errors import SpecError
from .hookspecs import hookimpl
from .registry import NoOptions
from .routes import Link, Route, Segment

__all__ = [
    "CanStitch",
    "MakeStitch",
    "SpaceContext",
    "StitchSpace",
    "space_routes",
    "AnchorsSpace",
    "SNNetOptions",
    "SNNetSpace",
    "SNNet2Options",
    "SNNet2Space",
    "by_flops",
    "depth_map",
    "paired_windows",
]

class CanStitch(Protocol):
    """``can_stitch(src, src_pos, dst, dst_pos)``: whether the chosen stitching layer can bridge two cut points.

    ``src`` and ``dst`` are anchor names; the positions are cut points
    (``0`` after the stem, ``depth`` after the last block).
    """

    def __call__(self, src: str, src_pos: int, dst: str, dst_pos: int) -> bool: ...


class MakeStitch(Protocol):
    """``make_stitch(src, src_pos, dst, dst_pos)``: a fresh stitching layer for a stitch, or ``None`` when none fits."""

    def __call__(self, src: str, src_pos: int, dst: str, dst_pos: int) -> Any: ...


@attrs.define(kw_only=True)
class SpaceContext:
    """What the engine offers a stitch space besides the anchors and ``can_stitch``.

    Passed to every space as ``routes(anchors, can_stitch, context=...)``.
    Built by :func:`stitchframe.build_snnet` (and :func:`stitchframe.assemble`).

    Attributes:
        probe: Probe inputs for spaces that run the anchors to choose routes:
            a re-iterable collection of batches (model inputs, or
            ``(inputs, target)`` pairs as a DataLoader yields them), or a
            callable ``probe(anchors)`` returning one, resolved on first
            access of :attr:`probe` (so data is only loaded for spaces that
            read it).  ``None``: no data was given.  A space should take only
            the batches it needs (``itertools.islice``).
        make_stitch: ``make_stitch(src, src_pos, dst, dst_pos)`` returns a
            fresh stitching layer of the type and options the engine will
            build for that stitch (``None`` when none can bridge it), for
            spaces that cost or run candidate routes before choosing.
            The engine builds its own layers afterwards.
        seed: The spec's seed; spaces that sample use it to be reproducible.
        final_norm: The SN-Net's final-norm policy (``keep`` or
            ``skip_stitched``), which changes a stitched route's parameters.
        anchors: The anchors, handed to a callable ``probe``.
    """

    _probe: Any = None  # the constructor argument is ``probe``
    make_stitch: MakeStitch | None = None
    seed: int = 0
    final_norm: str = "keep"
    anchors: Sequence[Any] = ()
    _resolved: bool = attrs.field(default=False, init=False, repr=False)

    @property
    def probe(self) -> Any:
        """The probe batches (``None`` when no data was given); a callable source is resolved once."""
        if callable(self._probe) and not self._resolved:
            self._probe = self._probe(list(self.anchors))
            self._resolved = True
        return self._probe


class StitchSpace:
    """Base class of stitch spaces.

    Args:
        options: An instance of ``Options`` (``None``: defaults).
    """

    Options: type = NoOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def routes(self, anchors: Sequence[Any], can_stitch: CanStitch,
               context: SpaceContext | None = None) -> Iterable[Route]:
        """Yield the routes of this space.

        Args:
            anchors: The anchors, in spec order.
            can_stitch: Whether the stitching layer can bridge two cut points.
            context: Probe data, a stitching-layer factory, the seed (the
                engine always passes one; ``None`` when called directly).
        """
        raise NotImplementedError


def space_routes(
    space: StitchSpace, anchors: Sequence[Any], can_stitch: CanStitch, context: SpaceContext | None = None
) -> list[Route]:
    """The routes of ``space``: ``space.routes(anchors, can_stitch, context=context)`` as a list.

    This is how the engine (and :func:`stitchframe.testing.check_stitch_space`) runs a space.
    """
    return list(space.routes(list(anchors), can_stitch, context=context))


def by_flops(anchors: Sequence[Any]) -> list[Any]:
    """Anchors sorted by total FLOPs (stable for ties)."""
    return sorted(anchors, key=lambda a: a.graph.flops)


def depth_map(src_depth: int, dst_depth: int, block: int) -> int:
    """Index of the ``dst`` block at the same relative depth as ``src`` block ``block``.

    The identity when depths are equal; otherwise the block whose output sits
    nearest to the same fraction of the network.
    """
    if src_depth == dst_depth:
        return block
    nearest = int((block + 1) * dst_depth / src_depth + 0.5)  # round half up
    return max(0, min(dst_depth - 1, nearest - 1))


def paired_windows(depth: int, kernel: int, stride: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """SN-Net's sliding-window pairing over block indices.

    Windows of ``kernel`` consecutive blocks move by ``stride``; each window
    contributes every ordered pair ``(j, k)`` of its blocks not already
    produced.  A pair means "run the front anchor through block ``j``, then
    the end anchor from block ``k``".  With depth 12, kernel 2 and stride 1
    this gives the reference code's 34 pairs in 11 windows.

    Returns:
        ``(window_id, pairs)`` for every window that added pairs.
    """
    seen: set[tuple[int, int]] = set()
    out = []
    i = 0
    while i < depth:
        ids = range(i, min(i + kernel, depth))
        new = [(j, k) for j in ids for k in ids if (j, k) not in seen]
        seen.update(new)
        if new:
            out.append((len(out), new))
        i += stride
    return out


def _check_stride(stride: int, limit: int, front: Any) -> None:
    """A stride past the anchor's depth leaves one window or none: a mistake in the spec, not a space."""
    if stride > max(limit, 1):
        raise SpecError(
            f"stitch.space_options.stride: {stride} is far more than anchor {front.name!r} allows (depth "
            f"{front.depth}: at most {max(limit, 1)}); use a stride between 1 and {max(limit, 1)}"
        )


class AnchorsSpace(StitchSpace):
    """Every anchor alone: no stitching (a baseline, or an ensemble to switch between)."""

    def routes(self, anchors, can_stitch, context=None):
        for a in anchors:
            yield Route([Segment(a.name, 0, a.depth)], meta={"kind": "anchor"})


@attrs.frozen(kw_only=True)
class SNNetOptions:
    """Options of the ``snnet`` space."""

    kernel: int = attrs.field(
        default=2, validator=attrs.validators.ge(1), metadata={"help": "Sliding-window size over blocks."}
    )
    stride: int = attrs.field(default=1, validator=attrs.validators.ge(1), metadata={"help": "Window stride."})
    nearest: bool = attrs.field(
        default=True,
        metadata={
            "help": "Stitch only neighbours in FLOPs order (T->S, S->B); false adds every pair and "
            "three-anchor routes, as the reference code's nearest_stitching=False."
        },
    )
    share: bool = attrs.field(
        default=True,
        metadata={"help": "Share one stitching layer per window (the reference code); false: one per cut pair."},
    )
    include_anchors: bool = attrs.field(default=True, metadata={"help": "Include each anchor alone."})
    same_grid: bool = attrs.field(
        default=True,
        metadata={"help": "Stitch activations that have a grid (maps, patch tokens) only where the two grids are "
                          "equal; false lets a resizing layer bridge them."},
    )


def _grids_match(front, p: int, end, q: int) -> bool:
    g1, g2 = front.graph.spec_at(p).grid, end.graph.spec_at(q).grid
    return g1 is None or g2 is None or g1 == g2


def _warn_no_stitch(front, end) -> None:
    """Warn that ``same_grid`` left no stitch from ``front`` into ``end`` (their grids never match)."""
    warnings.warn(
        f"No stitch from anchor {front.name!r} into {end.name!r}: their activation grids never match at the "
        "paired blocks (space_options.same_grid: true). Use anchors with equal grids (e.g. the same patch size "
        "and input size), or set stitch.space_options.same_grid: false to stitch across grids with a resizing "
        "layer",
        stacklevel=4,
    )


class SNNetSpace(StitchSpace):
    """SN-Net v1: paired fast-to-slow stitching between anchors ordered by FLOPs."""

    Options = SNNetOptions

    def _pairs(self, front, end, can_stitch) -> list[tuple[int, int, str | None]]:
        """``(src_pos, dst_pos, key)`` for every stitch from ``front`` into ``end``."""
        o = self.options
        _check_stride(o.stride, front.depth, front)
        out = []
        grid_skips = grid_ok = 0
        for window, pairs in paired_windows(front.depth, o.kernel, o.stride):
            group = []
            for j, k in pairs:
                p, q = j + 1, depth_map(front.depth, end.depth, k)
                if o.same_grid and not _grids_match(front, p, end, q):
                    grid_skips += 1
                    continue
                grid_ok += 1
                if can_stitch(front.name, p, end.name, q):
                    group.append((p, q))
            specs = {(front.graph.spec_at(p), end.graph.spec_at(q)) for p, q in group}
            key = f"{front.name}->{end.name}#w{window}" if o.share and len(specs) == 1 else None
            out += [(p, q, key) for p, q in group]
        if grid_skips and not grid_ok:
            _warn_no_stitch(front, end)
        return out

    def routes(self, anchors, can_stitch, context=None):
        o = self.options
        ordered = by_flops(anchors)
        if o.include_anchors:
            yield from AnchorsSpace().routes(ordered, can_stitch)
        n = len(ordered)
        if o.nearest:
            combos = [(i, i + 1) for i in range(n - 1)]
        else:
            combos = [c for r in range(2, n + 1) for c in combinations(range(n), r) if r <= 3]
        cache: dict[tuple[int, int], list] = {}
        for combo in combos:
            chain = [ordered[i] for i in combo]
            steps = []
            for a, b in zip(combo, combo[1:]):
                if (a, b) not in cache:
                    cache[(a, b)] = self._pairs(ordered[a], ordered[b], can_stitch)
                steps.append(cache[(a, b)])
            yield from self._expand(chain, steps)

    @staticmethod
    def _expand(chain, steps) -> Iterable[Route]:
        def rec(i, start, segs, links):
            if i == len(steps):
                last = chain[-1]
                yield Route([*segs, Segment(last.name, start, last.depth)], links, meta={"kind": "stitched"})
                return
            for p, q, key in steps[i]:
                if p <= start:  # the middle anchor must run at least one block
                    continue
                yield from rec(i + 1, q, [*segs, Segment(chain[i].name, start, p)], [*links, Link(key=key)])

        yield from rec(0, 0, [], [])


@attrs.frozen(kw_only=True)
class SNNet2Options:
    """Options of the ``snnet2`` (two-way) space."""

    directions: tuple[str, ...] = attrs.field(
        default=("sl", "ls", "sls", "lsl"),
        converter=tuple,
        validator=attrs.validators.deep_iterable(attrs.validators.in_(("sl", "ls", "sls", "lsl"))),
        metadata={"help": "Which route shapes to include: sl, ls, sls, lsl (s: smaller, l: larger anchor)."},
    )
    stride: int = attrs.field(
        default=1, validator=attrs.validators.ge(1), metadata={"help": "Stitch after every stride-th block."}
    )
    include_anchors: bool = attrs.field(default=True, metadata={"help": "Include each anchor alone."})
    same_grid: bool = attrs.field(
        default=True,
        metadata={"help": "Stitch activations that have a grid (maps, patch tokens) only where the two grids are "
                          "equal; false lets a resizing layer bridge them."},
    )


class SNNet2Space(StitchSpace):
    """SN-Netv2 two-way stitching between neighbouring anchors (by FLOPs)."""

    Options = SNNet2Options

    def _links(self, front, end, can_stitch) -> list[tuple[int, int]]:
        _check_stride(self.options.stride, front.depth - 1, front)
        out = []
        grid_skips = grid_ok = 0
        for p in range(self.options.stride, front.depth, self.options.stride):
            q = depth_map(front.depth, end.depth, p - 1) + 1
            if q >= end.depth:
                continue
            if self.options.same_grid and not _grids_match(front, p, end, q):
                grid_skips += 1
                continue
            grid_ok += 1
            if can_stitch(front.name, p, end.name, q) and (p, q) not in out:
                out.append((p, q))
        if grid_skips and not grid_ok:
            _warn_no_stitch(front, end)
        return out

    def routes(self, anchors, can_stitch, context=None):
        o = self.options
        ordered = by_flops(anchors)
        if o.include_anchors:
            yield from AnchorsSpace().routes(ordered, can_stitch)
        for s, l in zip(ordered, ordered[1:]):
            sl, ls = self._links(s, l, can_stitch), self._links(l, s, can_stitch)
            if "sl" in o.directions:
                for p, q in sl:
                    yield Route.chain((s.name, 0, p), (l.name, q, l.depth), meta={"kind": "sl"})
            if "ls" in o.directions:
                for p, q in ls:
                    yield Route.chain((l.name, 0, p), (s.name, q, s.depth), meta={"kind": "ls"})
            for kind, (a, b), first, second in (("sls", (s, l), sl, ls), ("lsl", (l, s), ls, sl)):
                if kind not in o.directions:
                    continue
                for p1, q1 in first:
                    for p2, q2 in second:
                        if p2 > q1:
                            yield Route.chain((a.name, 0, p1), (b.name, q1, p2), (a.name, q2, a.depth), meta={"kind": kind})


@hookimpl
def stitchframe_register_stitch_spaces(register) -> None:
    """Register the built-in stitch spaces."""
    register("anchors", AnchorsSpace)
    register("snnet", SNNetSpace)
    register("snnet2", SNNet2Space)
