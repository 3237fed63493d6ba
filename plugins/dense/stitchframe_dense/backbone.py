"""A stitched backbone for dense prediction (SN-Netv2): multi-scale features for every route.

Every route of an SN-Net runs some number ``L`` of blocks.  For each level
``l`` the backbone takes the activation after block ``round(f_l * L)`` of the
route (``f_l`` one of ``fractions``), wherever along the route that falls,
and projects it to a fixed map: ``out_channels[l]`` channels on the grid of
``strides[l]`` (input size over stride).  The projection belongs to the cut
point it reads, ``(level, anchor, position)``, so routes that pass through
the same cut point share it.  It is stitchframe's ``linear`` stitching layer
from the activation's spec to the level's map spec: tokens become a map
(prefix tokens dropped), channels are projected, and the grid is resized
(``area`` to shrink, ``bilinear`` to grow; a ViT's single 1/16 grid becomes a
1/4 ... 1/32 pyramid, as ViTDet's simple feature pyramid).  Feature shapes
per level are therefore the same for every route, and one head serves all.

The backbone runs routes through the SN-Net's public API (anchors'
``prepare``/``run_stem``/``run_blocks`` and ``SNNet.stitch_for``) and stops
after the deepest level; the anchors' final norms and heads are never run.
It runs the SN-Net's selected route (``select`` switches both), so a
training loop or evaluator that calls ``snnet.select(route)`` drives it, and
it uses the route's own BatchNorm statistics when the SN-Net has them
(``SNNet.enable_route_bn``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stitchframe import ActivationSpec, LinearStitch, Route, SNNet, SpecError

__all__ = ["StitchedBackbone", "level_positions"]


def level_positions(route: Route, fractions: Sequence[float]) -> list[tuple[int, str, int]]:
    """Where each level reads a route: ``(segment index, anchor, cut position)`` per fraction.

    Level ``l`` reads the output of the route's ``max(1, round(f_l * L))``-th
    block, ``L`` the blocks the route runs; a block that ends a segment is read
    before the stitch, in its own anchor.

    Raises:
        SpecError: The route runs no block.
    """
    steps = [(i, seg.anchor, b + 1) for i, seg in enumerate(route.segments) for b in range(seg.start, seg.end)]
    if not steps:
        raise SpecError(f"StitchedBackbone: route {route.describe()!r} runs no block, so it has no features")
    return [steps[min(len(steps), max(1, int(f * len(steps) + 0.5))) - 1] for f in fractions]


def _per_level(value: int | Sequence[int], n: int, what: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise SpecError(f"StitchedBackbone: {what} has {len(values)} values for {n} levels; give one per fraction")
    return values


class StitchedBackbone(nn.Module):
    """Multi-scale features of every route of an SN-Net, with the same shapes for all routes.

    Args:
        snnet: The SN-Net (a submodule: moved, saved and optionally trained with the backbone).
        fractions: Depth fractions ``0 < f <= 1`` of the levels, increasing.
        out_channels: Channels of every level (one value, or one per level).
        strides: Output stride of every level relative to the input.
        input_size: Input ``(H, W)``; default the first anchor's example input's.
        routes: Route ids (or names) the backbone serves; default all.

    Raises:
        SpecError: Bad fractions, strides or channels, or an activation that
            cannot become a map (text ``sequence`` layouts).
    """

    def __init__(
        self,
        snnet: SNNet,
        *,
        fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        out_channels: int | Sequence[int] = 64,
        strides: Sequence[int] = (4, 8, 16, 32),
        input_size: tuple[int, int] | None = None,
        routes: Sequence[int | str] | None = None,
    ) -> None:
        super().__init__()
        fractions = [float(f) for f in fractions]
        if not fractions or any(not 0 < f <= 1 for f in fractions) or sorted(set(fractions)) != fractions:
            raise SpecError(f"StitchedBackbone: fractions {fractions} must be increasing values in (0, 1]")
        self.snnet = snnet
        self.fractions = tuple(fractions)
        channels = _per_level(out_channels, len(fractions), "out_channels")
        self.strides = tuple(_per_level(list(strides), len(fractions), "strides"))
        self.input_size = tuple(input_size) if input_size is not None else self._example_size()
        h, w = self.input_size
        self.level_specs = tuple(
            ActivationSpec(layout="map", channels=c, grid=(max(1, h // s), max(1, w // s)))
            for c, s in zip(channels, self.strides)
        )
        ids = range(len(snnet.routes)) if routes is None else [snnet.routes.index_of(r) for r in routes]
        self.route_ids = tuple(ids)
        self.plans = {r: level_positions(snnet.routes[r], self.fractions) for r in self.route_ids}
        self.projections = nn.ModuleDict()
        for plan in self.plans.values():
            for level, (_seg, anchor, pos) in enumerate(plan):
                key = self.projection_key(level, anchor, pos)
                if key not in self.projections:
                    self.projections[key] = self._projection(anchor, pos, self.level_specs[level])
        if snnet.selected_id not in self.plans:
            snnet.select(self.route_ids[0])

    def _example_size(self) -> tuple[int, int]:
        x = next(iter(self.snnet.anchors.values())).example_inputs
        if not (isinstance(x, torch.Tensor) and x.dim() == 4):
            raise SpecError("StitchedBackbone: the anchors take no image inputs; pass input_size=(H, W)")
        return int(x.shape[-2]), int(x.shape[-1])

    def _projection(self, anchor: str, pos: int, dst: ActivationSpec) -> LinearStitch:
        src = self.snnet.anchors[anchor].graph.spec_at(pos)
        reason = LinearStitch.supports(src, dst)
        if reason is not None:
            raise SpecError(
                f"StitchedBackbone: {self.snnet.anchors[anchor].graph.name_at(pos)} {src.describe()} ({src.layout}) "
                f"cannot become a {dst.describe()} map: {reason}; dense features need spatial activations"
            )
        return LinearStitch(src, dst)

    @staticmethod
    def projection_key(level: int, anchor: str, pos: int) -> str:
        """Key of the projection of ``anchor`` at ``pos`` for ``level`` in :attr:`projections`."""
        return f"l{level}:{anchor}:{pos}"

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of every level."""
        return tuple(s.channels for s in self.level_specs)

    def feature_shapes(self, batch: int = 1) -> list[tuple[int, ...]]:
        """The shape of every level's features (the same for every route)."""
        return [s.shape(batch) for s in self.level_specs]

    @property
    def selected(self) -> Route:
        """The route :meth:`forward` runs: the SN-Net's selected route."""
        return self.snnet.selected

    def _served(self, rid: int) -> int:
        if rid not in self.plans:
            raise SpecError(f"StitchedBackbone: route {rid} is not one of the routes it serves {list(self.route_ids)}")
        return rid

    def select(self, route: int | str | Route) -> Route:
        """Switch to another route (id, name or Route) of :attr:`route_ids`: selects it in the SN-Net."""
        return self.snnet.select(self._served(self.snnet.routes.index_of(route)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of the selected route, one ``[B, C_l, H_l, W_l]`` map per level."""
        rid = self._served(self.snnet.selected_id)
        raw = self.raw_features(x, rid)
        return [
            self.projections[self.projection_key(lvl, a, p)](h)
            for lvl, ((_, a, p), h) in enumerate(zip(self.plans[rid], raw))
        ]

    def raw_features(self, x: torch.Tensor, route: int | str | Route | None = None) -> list[torch.Tensor]:
        """The activations each level reads, before projection (default: the selected route)."""
        rid = self._served(self.snnet.selected_id if route is None else self.snnet.routes.index_of(route))
        state = self.snnet.route_bn
        if state is None:
            return self._run(x, rid)
        state.route = rid  # per-route BatchNorm statistics, as SNNet.forward_route uses them
        try:
            return self._run(x, rid)
        finally:
            state.route = None

    def _run(self, x: torch.Tensor, rid: int) -> list[torch.Tensor]:
        r, plan = self.snnet.routes[rid], self.plans[rid]
        wanted: dict[tuple[int, int], list[int]] = {}
        for level, (seg, _anchor, pos) in enumerate(plan):
            wanted.setdefault((seg, pos), []).append(level)
        out: list[Any] = [None] * len(plan)
        remaining, ctxs, h = len(plan), {}, None
        for i, seg in enumerate(r.segments):
            anchor = self.snnet.anchors[seg.anchor]
            if anchor.name not in ctxs:
                ctxs[anchor.name] = anchor.prepare(x)
            ctx = ctxs[anchor.name]
            if i == 0:
                h = anchor.run_stem(x, ctx)
            for b in range(seg.start, seg.end):
                h = anchor.run_blocks(h, b, b + 1, ctx)
                for level in wanted.get((i, b + 1), ()):
                    out[level], remaining = h, remaining - 1
                if not remaining:
                    return out
            if i < len(r.segments) - 1:
                h = self.snnet.stitch_for(r, i)(h)
        return out

    def extra_repr(self) -> str:
        return f"routes={len(self.route_ids)}, fractions={self.fractions}, shapes={self.feature_shapes()}"
