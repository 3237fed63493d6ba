"""The SNNet module: anchors plus stitching layers, one route selected at a time."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from .anchors import Anchor, count_flops
from .errors import StitchframeError
from .route_bn import RouteBNState, attach_route_bn, plain_batchnorm
from .routes import Route, RouteTable
from .stitch_layers import StitchLayer

__all__ = ["SNNet", "RouteModule", "PlanSegment", "FINAL_NORM_CHOICES", "stitch_key", "route_segments"]

#: ``keep``: every route ends with its end anchor's final norm (SN-Netv2).
#: ``skip_stitched``: stitched routes skip it, anchor routes keep it (SN-Net v1 code).
FINAL_NORM_CHOICES = ("keep", "skip_stitched")


def stitch_key(src: str, src_pos: int, dst: str, dst_pos: int) -> str:
    """Default key of the stitching layer between two cut points."""
    return f"{src}:{src_pos}->{dst}:{dst_pos}"


class PlanSegment(NamedTuple):
    """One segment of an execution plan (plain references, no copies); see :meth:`SNNet.plan`.

    ``key`` names the anchor (its context is built once per input and
    shared by its segments); ``stem``, ``stitch``, ``norm`` and ``head`` are
    ``None`` where the segment has none.
    """

    key: str
    uses_context: bool
    prepare: Any
    stem: Any
    blocks: Sequence[nn.Module]
    stitch: Any
    norm: Any
    head: Any


def _execute(inputs: Any, plan: Sequence[PlanSegment]) -> Any:
    """Run a plan.  SNNet and exported routes share this, so outputs are bit-identical."""
    ctxs: dict[str, Any] = {}
    x = inputs
    for s in plan:
        if s.uses_context:
            if s.key not in ctxs:
                ctxs[s.key] = s.prepare(inputs)
            c = ctxs[s.key]
            if s.stem is not None:
                x = s.stem(inputs, c)
            for blk in s.blocks:
                x = blk(x, c)
        else:
            c = None
            if s.stem is not None:
                x = s.stem(inputs)
            for blk in s.blocks:
                x = blk(x)
        if s.stitch is not None:
            x = s.stitch(x)
        if s.head is not None:
            if s.norm is not None:
                x = s.norm(x)
            x = s.head(x, c) if s.uses_context else s.head(x)
    return x


#: Bumped whenever a module of an exported route's segment is reassigned (``seg.head = ...``, as
#: eager quantization does), so every :class:`RouteModule` rebuilds its precomputed plan.
_segment_edits = [0]


class _SegmentModule(nn.Module):
    """The modules of one segment of an exported route."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        _segment_edits[0] += 1

    def __init__(self, anchor: Anchor, start: int, end: int, *, first: bool, last: bool, stitch, norm: bool):
        super().__init__()
        self.anchor_name = anchor.name
        self.uses_context = anchor.uses_context
        self.start = start
        self.context = anchor.context
        self.prepare_fn = anchor.prepare_fn
        self.stem = anchor.stem if first else None
        self.blocks = nn.ModuleList(anchor.blocks[start:end])
        self.stitch = stitch
        self.norm = anchor.norm if (last and norm) else None
        self.head = anchor.head if last else None

    def prepare(self, inputs: Any) -> Any:
        return self.context(inputs) if self.context is not None else self.prepare_fn(inputs)

    def plan(self) -> PlanSegment:
        return PlanSegment(
            self.anchor_name,
            self.uses_context,
            self.prepare,
            self.stem,
            self.blocks,  # the ModuleList itself: a block replaced in it is seen
            self.stitch,
            self.norm,
            self.head,
        )


def route_segments(route: Route, anchors: Mapping[str, Anchor], stitches: Sequence[Any], *,
                   norm: bool) -> list[_SegmentModule]:
    """The segment modules of ``route`` over ``anchors`` (by name) and one stitching layer per link (no copies).

    ``norm``: the last segment runs its anchor's final norm (:meth:`SNNet.uses_norm`).  What
    :meth:`SNNet.export` and :func:`stitchframe.load_route` build a :class:`RouteModule` from.
    """
    n = len(route.segments)
    return [
        _SegmentModule(anchors[seg.anchor], seg.start, seg.end, first=i == 0, last=i == n - 1,
                       stitch=None if i == n - 1 else stitches[i], norm=norm)
        for i, seg in enumerate(route.segments)
    ]


class RouteModule(nn.Module):
    """A standalone module computing one route; holds only that route's weights.

    Made by :meth:`SNNet.export`.  Its ``state_dict`` keys are
    ``segments.<i>.{stem,blocks.<j>,stitch,norm,head}...``; ``route`` records
    which route it is.
    """

    def __init__(self, route: Route, segments: Sequence[_SegmentModule]) -> None:
        super().__init__()
        self.route = route
        self.segments = nn.ModuleList(segments)
        # Precomputed like SNNet's plans (rebuilding it per call cost ~10 µs): plain
        # references to the segment modules, which deepcopy maps onto the copies;
        # rebuilt after a segment's module is reassigned (see _segment_edits).
        self._plan = tuple(s.plan() for s in self.segments)
        self._plan_edits = _segment_edits[0]

    def forward(self, inputs: Any) -> Any:
        if self._plan_edits != _segment_edits[0]:
            self._plan = tuple(s.plan() for s in self.segments)
            self._plan_edits = _segment_edits[0]
        return _execute(inputs, self._plan)

    def merge(self) -> RouteModule:
        """Merge training-time structure of the stitching layers (``lowrank``) in place."""
        for s in self.segments:
            if isinstance(s.stitch, StitchLayer):
                s.stitch.merge()
        return self

    def extra_repr(self) -> str:
        return f"route={self.route.describe()!r}"


class SNNet(nn.Module):
    """A Stitchable Neural Network: anchors, stitching layers, and a route table.

    Usually built by :func:`stitchframe.build_snnet` or
    :func:`stitchframe.assemble`.  ``forward`` runs the selected route;
    :meth:`select` switches routes in O(1) (plans are precomputed).

    Args:
        anchors: The anchors (names must be unique).
        routes: Routes whose links carry a layer type and key
            (``link.key`` or the default :func:`stitch_key`).
        stitches: Stitching layers by key.
        final_norm: One of :data:`FINAL_NORM_CHOICES`.
    """

    def __init__(
        self,
        anchors: Sequence[Anchor],
        routes: Sequence[Route],
        stitches: Mapping[str, StitchLayer],
        *,
        final_norm: str = "keep",
    ) -> None:
        super().__init__()
        if final_norm not in FINAL_NORM_CHOICES:
            raise StitchframeError(f"final_norm {final_norm!r} must be one of {', '.join(FINAL_NORM_CHOICES)}")
        names = [a.name for a in anchors]
        if len(set(names)) != len(names):
            raise StitchframeError(f"Anchor names must be unique, got {names}; give anchors explicit names")
        self.anchors = nn.ModuleDict({a.name: a for a in anchors})
        self.stitches = nn.ModuleDict(dict(stitches))
        self.final_norm = final_norm
        for r in routes:
            self._check_route(r)
        self.routes = RouteTable(self._with_costs(r) for r in routes)
        self.__dict__.pop("_module_params_cache", None)  # ids are only stable while building
        self._plans = [self._make_plan(r) for r in self.routes]
        self._selected = 0
        self._route_bn_state: RouteBNState | None = None

    # -- routes --------------------------------------------------------
    def link_key(self, src: str, src_pos: int, dst: str, dst_pos: int, link) -> str:
        """Key of the stitching layer a link uses."""
        return link.key or stitch_key(src, src_pos, dst, dst_pos)

    def stitch_for(self, route: Route, i: int) -> StitchLayer:
        """The stitching layer of link ``i`` of ``route``."""
        src, p, dst, q, link = list(route.stitch_points())[i]
        return self.stitches[self.link_key(src, p, dst, q, link)]

    def _check_route(self, route: Route) -> None:
        for seg in route.segments:
            if seg.anchor not in self.anchors:
                raise StitchframeError(f"Route {route} uses unknown anchor {seg.anchor!r}; anchors: {list(self.anchors)}")
            if seg.end > self.anchors[seg.anchor].depth:
                raise StitchframeError(
                    f"Route {route}: {seg} goes past {seg.anchor}'s {self.anchors[seg.anchor].depth} blocks"
                )
        last = route.segments[-1]
        if last.end != self.anchors[last.anchor].depth:
            raise StitchframeError(f"Route {route} must end at {last.anchor}'s last block ({self.anchors[last.anchor].depth})")
        for src, p, dst, q, link in route.stitch_points():
            key = self.link_key(src, p, dst, q, link)
            if key not in self.stitches:
                raise StitchframeError(f"Route {route} needs stitching layer {key!r}, which this SN-Net lacks")

    def uses_norm(self, route: Route) -> bool:
        """Whether ``route`` ends with its end anchor's final norm (``final_norm``; anchor routes always do)."""
        return self.final_norm == "keep" or route.is_anchor

    def segment_modules(self, route: Route) -> list[list[nn.Module]]:
        """The anchor modules each segment of ``route`` runs, in order (stitching layers left out).

        The first segment includes its anchor's stem, every segment its
        anchor's context module (if any), the last one the final norm (when
        the route uses it) and the head.
        """
        out: list[list[nn.Module]] = []
        n = len(route.segments)
        for i, seg in enumerate(route.segments):
            a: Anchor = self.anchors[seg.anchor]
            mods: list[nn.Module] = [a.stem] if i == 0 else []
            if a.context is not None:
                mods.append(a.context)
            mods += list(a.blocks[seg.start : seg.end])
            if i == n - 1:
                if self.uses_norm(route) and a.norm is not None:
                    mods.append(a.norm)
                mods.append(a.head)
            out.append(mods)
        return out

    def route_modules(self, route: Route) -> list[nn.Module]:
        """Every module ``route`` runs: its segments' modules, then its stitching layers."""
        mods = [m for seg in self.segment_modules(route) for m in seg]
        return mods + [self.stitch_for(route, i) for i in range(len(route.links))]

    def _with_costs(self, route: Route) -> Route:
        if route.flops is not None and route.params is not None:
            return route
        flops = 0
        for i, seg in enumerate(route.segments):
            g = self.anchors[seg.anchor].graph
            if i == 0:
                flops += g.stem.flops
            flops += g.flops_between(seg.start, seg.end)
        for i in range(len(route.links)):
            flops += self._stitch_flops(route, i)
        flops += self.anchors[route.segments[-1].anchor].graph.head.flops
        seen: set[int] = set()
        params = 0
        cache = self.__dict__.setdefault("_module_params_cache", {})
        for m in self.route_modules(route):
            if id(m) not in cache:
                cache[id(m)] = [(id(p), p.numel()) for p in m.parameters()]
            for pid, numel in cache[id(m)]:
                if pid not in seen:
                    seen.add(pid)
                    params += numel
        return route.with_costs(flops, params)

    def _stitch_flops(self, route: Route, i: int) -> int:
        src, p, _dst, _q, _link = list(route.stitch_points())[i]
        layer = self.stitch_for(route, i)
        cache = self.__dict__.setdefault("_stitch_flops_cache", {})
        key = (id(layer), src, p)
        if key not in cache:
            spec = self.anchors[src].graph.spec_at(p)
            param = next(layer.parameters(), None)
            kw = {"device": param.device, "dtype": param.dtype} if param is not None else {}
            with torch.no_grad():
                _, cache[key] = count_flops(layer, spec.example(1, **kw))
        return cache[key]

    def _make_plan(self, route: Route) -> tuple[PlanSegment, ...]:
        plan = []
        n = len(route.segments)
        for i, seg in enumerate(route.segments):
            a: Anchor = self.anchors[seg.anchor]
            last = i == n - 1
            plan.append(
                PlanSegment(
                    a.name,
                    a.uses_context,
                    a.prepare,
                    a.stem if i == 0 else None,
                    tuple(a.blocks[seg.start : seg.end]),
                    None if last else self.stitch_for(route, i),
                    a.norm if (last and self.uses_norm(route)) else None,
                    a.head if last else None,
                )
            )
        return tuple(plan)

    # -- public API ----------------------------------------------------
    @property
    def selected(self) -> Route:
        """The route ``forward`` runs."""
        return self.routes[self._selected]

    @property
    def selected_id(self) -> int:
        """Id of the selected route."""
        return self._selected

    def select(self, route: int | str | Route) -> Route:
        """Switch to another route (by id, printed name, or :class:`Route`); O(1)."""
        # object.__setattr__: nn.Module.__setattr__ allocates a closure on every call,
        # and an int is never a parameter, buffer or submodule.
        if isinstance(route, int) and 0 <= route < len(self._plans):
            object.__setattr__(self, "_selected", route)
        else:
            object.__setattr__(self, "_selected", self.routes.index_of(route))
        return self.routes[self._selected]

    def forward(self, inputs: Any) -> Any:
        """Run the selected route."""
        state = self._route_bn_state
        if state is None:
            return _execute(inputs, self._plans[self._selected])
        state.route = self._selected
        try:
            return _execute(inputs, self._plans[self._selected])
        finally:
            state.route = None

    def forward_route(self, inputs: Any, route: int | str | Route) -> Any:
        """Run one route without changing the selection."""
        rid = route if isinstance(route, int) and 0 <= route < len(self._plans) else self.routes.index_of(route)
        state = self._route_bn_state
        if state is None:
            return _execute(inputs, self._plans[rid])
        state.route = rid
        try:
            return _execute(inputs, self._plans[rid])
        finally:
            state.route = None

    def plan(self, route: int | str | Route) -> tuple[PlanSegment, ...]:
        """The precomputed execution plan of a route: what ``forward`` runs, segment by segment."""
        rid = route if isinstance(route, int) and 0 <= route < len(self._plans) else self.routes.index_of(route)
        return self._plans[rid]

    @property
    def route_bn(self) -> RouteBNState | None:
        """The per-route BatchNorm state (``None`` until :meth:`enable_route_bn`)."""
        return self._route_bn_state

    def enable_route_bn(self) -> RouteBNState:
        """Give every BatchNorm layer of the anchors one set of statistics per route (idempotent).

        Outputs do not change until :func:`stitchframe.recalibrate_route_bn`
        fills the statistics; see :mod:`stitchframe.route_bn`.
        """
        if self._route_bn_state is None:
            object.__setattr__(self, "_route_bn_state", attach_route_bn(self))
        return self._route_bn_state

    def set_route_meta(self, route: int | str | Route, **meta: Any) -> Route:
        """Record metadata (``accuracy=...``, ``latency_ms=...``) on a route."""
        i = self.routes.index_of(route)
        r = self.routes[i]
        new = r.with_costs(r.flops, r.params, **meta)
        self.routes.replace(i, new)
        return new

    def select_for(
        self,
        *,
        max_flops: float | None = None,
        max_macs: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
        metric: str = "accuracy",
    ) -> Route:
        """Select the best route within a budget and return it.

        "Best" is the highest recorded ``metric`` in route metadata (set by
        evaluation); routes without one rank below those with one, and among
        them more FLOPs ranks higher.

        Args:
            max_flops: Most FLOPs per example (torch's convention, ``route.flops``).
            max_macs: Most multiply-adds per example (``route.macs``, the papers'
                unit: half the FLOPs); with ``max_flops`` both must hold.
            max_params: Most parameters.
            max_latency_ms: Most measured latency (``route.meta["latency_ms"]``).
            metric: The metadata key to maximise.

        Raises:
            StitchframeError: No route fits; the message gives the cheapest.
        """
        limits = [v for v in (max_flops, None if max_macs is None else 2 * max_macs) if v is not None]
        flops_limit = min(limits) if limits else None
        fits = []
        for i, r in enumerate(self.routes):
            if flops_limit is not None and r.flops > flops_limit:
                continue
            if max_params is not None and r.params > max_params:
                continue
            if max_latency_ms is not None:
                lat = r.meta.get("latency_ms")
                if lat is None:
                    raise StitchframeError(
                        f"max_latency_ms needs a measured latency_ms on every route, route {i} has none; build "
                        "with eval.latency: true, or run stitchframe evaluate OUT --latency and load the build with "
                        "load_snnet(OUT, metrics='OUT/evaluation/routes.json'), or measure with "
                        "stitchframe.evaluate_routes(net, data, latency=True)"
                    )
                if lat > max_latency_ms:
                    continue
            fits.append(i)
        if not fits:
            cheapest = min(self.routes, key=lambda r: r.flops)
            asked = ", ".join(f"{k}={v}" for k, v in (("max_flops", max_flops), ("max_macs", max_macs),
                              ("max_params", max_params), ("max_latency_ms", max_latency_ms)) if v is not None)
            raise StitchframeError(
                f"No route fits {asked or 'the budget'}; the cheapest route is {cheapest} with "
                f"{cheapest.macs:.4g} MACs ({cheapest.flops:.4g} FLOPs) and {cheapest.params} params"
            )

        def rank(i: int):
            r = self.routes[i]
            m = r.meta.get(metric)
            return (m is not None, m if m is not None else 0.0, r.flops)

        best = max(fits, key=rank)
        self.select(best)
        return self.routes[best]

    def export(self, route: int | str | Route | None = None, *, merge: bool = False) -> RouteModule:
        """A standalone copy of one route (default: the selected one).

        The module holds only that route's weights (deep copies, so training
        the SN-Net later does not change it) and gives bit-identical outputs.
        With ``merge=True`` stitching layers are merged for inference (close,
        not bit-identical, for ``lowrank``).  It is ready for
        :func:`torch.export.export` and ONNX export.
        """
        r = self.routes[self.routes.index_of(route)] if route is not None else self.selected
        stitches = [self.stitch_for(r, i) for i in range(len(r.links))]
        segs = route_segments(r, self.anchors, stitches, norm=self.uses_norm(r))
        module = copy.deepcopy(RouteModule(r, segs))
        plain_batchnorm(module, self.routes.index_of(r))  # the route's own BatchNorm statistics, if any
        module.train(self.training)
        return module.merge() if merge else module

    def extra_repr(self) -> str:
        return f"routes={len(self.routes)}, final_norm={self.final_norm!r}"
