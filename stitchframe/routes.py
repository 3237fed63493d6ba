"""Routes: paths through the anchors of an SN-Net.

A :class:`Route` is an ordered tuple of :class:`Segment` objects, each a
block range of one anchor, joined by :class:`Link` objects (the stitching
layers).  The first segment starts at block 0 and so includes its anchor's
stem; the last one ends at its anchor's depth and so includes its head.
A link leaves the previous segment at cut position ``segment.end`` and enters
the next one at cut position ``segment.start``.

Routes print as ``deit_tiny[0:6] -> linear -> deit_small[6:12]`` and are
hashable; equality ignores costs and metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from .errors import StitchframeError, UnknownNameError, did_you_mean

__all__ = ["Segment", "Link", "Route", "RouteTable"]

_KEY = re.compile(r"^[^.\s]+$")


@attrs.frozen
class Segment:
    """Blocks ``start..end-1`` of one anchor."""

    anchor: str
    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise StitchframeError(f"Segment {self.anchor}[{self.start}:{self.end}] has a negative range")

    def __str__(self) -> str:
        return f"{self.anchor}[{self.start}:{self.end}]"


@attrs.frozen
class Link:
    """The stitching layer between two segments.

    Attributes:
        layer: Registered stitch-layer type (``None`` until the engine resolves it).
        key: Which stitching-layer instance to use.  Links with equal keys share
            one layer (SN-Net shares a layer within a sliding window); ``None``
            means one layer per pair of cut points.
    """

    layer: str | None = None
    key: str | None = attrs.field(default=None)

    @key.validator
    def _check_key(self, _attr, value) -> None:
        if value is not None and not _KEY.match(value):
            raise StitchframeError(f"Link key {value!r} must be non-empty with no '.' or whitespace")


@attrs.frozen
class Route:
    """A path through one or more anchors.

    Attributes:
        segments: The block ranges, in order.
        links: One link between each pair of consecutive segments.
        flops: Forward FLOPs for one example (batch 1), filled by the engine
            (torch's convention: one multiply-add is 2 FLOPs; see
            :func:`stitchframe.count_flops`).
        params: Parameters used by the route, filled by the engine.
        meta: Free-form metadata (kind of route, accuracy, ...).
    """

    segments: tuple[Segment, ...] = attrs.field(converter=tuple)
    links: tuple[Link, ...] = attrs.field(converter=tuple, default=())
    flops: int | None = attrs.field(default=None, eq=False)
    params: int | None = attrs.field(default=None, eq=False)
    meta: dict[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if not self.segments:
            raise StitchframeError("A route needs at least one segment")
        if not self.links and len(self.segments) > 1:
            object.__setattr__(self, "links", tuple(Link() for _ in self.segments[1:]))
        if len(self.links) != len(self.segments) - 1:
            raise StitchframeError(
                f"Route {self.describe()} has {len(self.segments)} segments but {len(self.links)} links"
            )
        if self.segments[0].start != 0:
            raise StitchframeError(f"Route {self.describe()} must start at block 0 (the stem)")

    @classmethod
    def chain(cls, *segments: tuple[str, int, int] | Segment, keys: Sequence[str | None] = (), **kw) -> Route:
        """Build a route from ``(anchor, start, end)`` tuples.

        Example:
            ``Route.chain(("deit_tiny", 0, 6), ("deit_small", 6, 12))``
        """
        segs = [s if isinstance(s, Segment) else Segment(*s) for s in segments]
        links = [Link(key=k) for k in keys] if keys else [Link() for _ in segs[1:]]
        return cls(segs, links, **kw)

    @property
    def anchors(self) -> tuple[str, ...]:
        """Anchor names in route order."""
        return tuple(s.anchor for s in self.segments)

    @property
    def macs(self) -> float | None:
        """Multiply-adds for one example: ``flops / 2``, the unit of the SN-Net papers' "FLOPs"."""
        return None if self.flops is None else self.flops / 2

    @property
    def is_anchor(self) -> bool:
        """True for a single-anchor route."""
        return len(self.segments) == 1

    def stitch_points(self) -> Iterator[tuple[str, int, str, int, Link]]:
        """``(src_anchor, src_pos, dst_anchor, dst_pos, link)`` for every link."""
        for a, b, link in zip(self.segments, self.segments[1:], self.links):
            yield a.anchor, a.end, b.anchor, b.start, link

    def describe(self) -> str:
        """``deit_tiny[0:6] -> linear -> deit_small[6:12]``."""
        parts = [str(self.segments[0])]
        for seg, link in zip(self.segments[1:], self.links):
            parts += [link.layer or "?", str(seg)]
        return " -> ".join(parts)

    __str__ = describe

    def with_costs(self, flops: int, params: int, **meta: Any) -> Route:
        """Copy with costs (and extra metadata) filled in."""
        return attrs.evolve(self, flops=flops, params=params, meta={**self.meta, **meta})

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: segments, links, flops, macs, params, meta."""
        return {
            "name": self.describe(),
            "segments": [[s.anchor, s.start, s.end] for s in self.segments],
            "links": [{"layer": link.layer, "key": link.key} for link in self.links],
            "flops": self.flops,
            "macs": self.macs,
            "params": self.params,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Route:
        """Inverse of :meth:`to_dict`."""
        return cls(
            [Segment(a, s, e) for a, s, e in data["segments"]],
            [Link(**link) for link in data.get("links", [])],
            flops=data.get("flops"),
            params=data.get("params"),
            meta=dict(data.get("meta") or {}),
        )


class RouteTable(Sequence[Route]):
    """The routes of an SN-Net; route ``i`` has id ``i``.

    Look routes up by id, by :class:`Route` or by their printed name.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = list(routes)
        self._index = {}
        for i, r in enumerate(self._routes):
            self._index.setdefault(r, i)
            self._index.setdefault(r.describe(), i)

    def __getitem__(self, i):  # type: ignore[override]
        return self._routes[i]

    def __len__(self) -> int:
        return len(self._routes)

    def index_of(self, route: int | str | Route) -> int:
        """Id of a route given as id, name or :class:`Route`."""
        if isinstance(route, bool):
            raise UnknownNameError(f"Route {route!r} is not an id, a name or a Route")
        if isinstance(route, int):
            if not -len(self) <= route < len(self):
                raise UnknownNameError(f"Route id {route} out of range; this SN-Net has routes 0..{len(self) - 1}")
            return route % len(self)
        if isinstance(route, str) and route.strip().isdigit():
            return self.index_of(int(route))
        if route in self._index:
            return self._index[route]
        names = [r.describe() for r in self._routes]
        raise UnknownNameError(
            f"Unknown route {str(route)!r}; {did_you_mean(str(route), names)}"
            f"see `stitchframe routes` for the {len(self)} routes of this SN-Net."
        )

    def replace(self, i: int, route: Route) -> None:
        """Replace route ``i`` (same topology, new costs or metadata)."""
        if route != self._routes[i]:
            raise StitchframeError(f"Route {i} is {self._routes[i]}, not {route}")
        self._routes[i] = route

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready list of routes with their ids."""
        return [{"id": i, **r.to_dict()} for i, r in enumerate(self._routes)]
