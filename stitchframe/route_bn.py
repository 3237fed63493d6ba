"""Per-route BatchNorm statistics: every route of a CNN SN-Net normalises with its own.

A BatchNorm layer of an anchor is shared by many routes, and after a stitch
the activations it sees differ from route to route, so one set of running
statistics is wrong for most of them (once-for-all networks recalibrate
BatchNorm per subnet for the same reason).  :meth:`SNNet.enable_route_bn` gives
every BatchNorm layer of the anchors a table of statistics, one row per
*distinct* input distribution:

* row 0 holds the statistics of the layer's own anchor route; every route
  that runs the layer before its first stitch uses it too (same weights on
  the same inputs give the same statistics);
* each route that runs the layer after a stitch gets a row of its own.

:func:`recalibrate_route_bn` fills the rows, route by route, from a few
training batches (exact population statistics: sums in float64, the
unbiased variance as BatchNorm keeps it).  Afterwards
:meth:`SNNet.forward`, :meth:`SNNet.forward_route`, the shared-prefix
evaluator and :meth:`SNNet.export` use each route's own rows; in training
mode BatchNorm behaves as usual (batch statistics).  The tables are ordinary
buffers, so they are saved with the SN-Net's weights.

The layer copies its route's row into ``running_mean``/``running_var``
when the route changes (a few microseconds for the whole network), so
modules keep their class behaviour (timm's ``BatchNormAct2d`` keeps its
activation) and an exported route is a plain BatchNorm with its route's
statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["RouteBNState", "attach_route_bn", "recalibrate_route_bn", "route_bn_layers", "plain_batchnorm"]

_BN = nn.modules.batchnorm._BatchNorm


class RouteBNState:
    """Which route the per-route BatchNorm layers of one SN-Net serve now.

    Attributes:
        route: The route id whose rows the layers use; ``None`` outside a
            route (an anchor's modules called directly use row 0, the
            anchor's own statistics).
        collecting: While true (during :func:`recalibrate_route_bn`) the
            layers normalise with batch statistics and add them to the
            route's own rows.
    """

    __slots__ = ("route", "collecting")

    def __init__(self) -> None:
        self.route: int | None = None  # None: outside a route (an anchor called directly) - row 0
        self.collecting = False


class _RouteBNMixin:
    """Mixed into the class of every BatchNorm layer of the anchors (see :func:`attach_route_bn`)."""

    route_rows: torch.Tensor  # [routes] int64: row of each route (0 for routes that never run the layer)
    route_mean: torch.Tensor  # [rows, C]
    route_var: torch.Tensor  # [rows, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state: RouteBNState = self._route_bn_state
        if state.collecting and state.route is not None:
            return self._collect(x, state.route)
        if not self.training:
            row = 0 if state.route is None else self._rows[state.route]
            if row != self._loaded_row:
                with torch.no_grad():
                    self.running_mean.copy_(self.route_mean[row])
                    self.running_var.copy_(self.route_var[row])
                self._loaded_row = row
        return super().forward(x)

    def _collect(self, x: torch.Tensor, route: int) -> torch.Tensor:
        row = self._rows[route]
        if self._owner[row] == route and not (row == 0 and self._skip_row0):
            dims = [d for d in range(x.dim()) if d != 1]
            xd = x.detach().double()
            acc = self._sums.setdefault(row, [0, 0.0, 0.0])
            acc[0] += x.numel() // x.shape[1]
            acc[1] = acc[1] + xd.sum(dims)
            acc[2] = acc[2] + (xd * xd).sum(dims)
        training, track = self.training, self.track_running_stats
        self.training, self.track_running_stats = True, False  # batch statistics, running ones untouched
        try:
            return super().forward(x)
        finally:
            self.training, self.track_running_stats = training, track

    def _finish_collect(self, spread: bool = False) -> None:
        with torch.no_grad():
            for row, (n, s1, s2) in self._sums.items():
                mean = s1 / n
                var = (s2 / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))
                self.route_mean[row].copy_(mean.to(self.route_mean.dtype))
                self.route_var[row].copy_(var.to(self.route_var.dtype))
            if spread and 0 in self._sums:
                self.route_mean.copy_(self.route_mean[0].expand_as(self.route_mean))
                self.route_var.copy_(self.route_var[0].expand_as(self.route_var))
            self.running_mean.copy_(self.route_mean[0])
            self.running_var.copy_(self.route_var[0])
        self._sums = {}
        self._loaded_row = -1

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._rows = self.route_rows.tolist()
        self._loaded_row = -1


_CLASSES: dict[type, type] = {}


def _route_class(cls: type) -> type:
    if issubclass(cls, _RouteBNMixin):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Route{cls.__name__}", (_RouteBNMixin, cls), {"__module__": __name__})
    return _CLASSES[cls]


def route_bn_layers(module: nn.Module) -> list[nn.Module]:
    """The per-route BatchNorm layers inside ``module``."""
    return [m for m in module.modules() if isinstance(m, _RouteBNMixin)]


def attach_route_bn(snnet: Any) -> RouteBNState:
    """Give every BatchNorm layer of ``snnet``'s anchors per-route statistics.

    Every row starts as the layer's current running statistics, so outputs do
    not change until :func:`recalibrate_route_bn` runs.  Called once per
    SN-Net by :meth:`SNNet.enable_route_bn`, which keeps the state.

    Returns:
        The state object the layers read the current route from.
    """
    state = RouteBNState()
    layers: dict[int, nn.Module] = {}
    rows: dict[int, list[int]] = {}  # id(layer) -> row per route
    owners: dict[int, list[int]] = {}  # id(layer) -> route that collects each row
    num_routes = len(snnet.routes)
    for rid, route in enumerate(snnet.routes):
        for seg_index, mods in enumerate(snnet.segment_modules(route)):
            for mod in mods:
                for bn in mod.modules():
                    if not isinstance(bn, _BN) or bn.running_mean is None:
                        continue
                    key = id(bn)
                    if key not in layers:
                        layers[key], rows[key], owners[key] = bn, [0] * num_routes, [-1]
                    if seg_index == 0:
                        if owners[key][0] < 0 or route.is_anchor:
                            owners[key][0] = rid  # the anchor route itself collects row 0 when it exists
                    else:
                        rows[key][rid] = len(owners[key])
                        owners[key].append(rid)
    for key, bn in layers.items():
        k = len(owners[key])
        bn.register_buffer("route_rows", torch.tensor(rows[key], dtype=torch.int64, device=bn.running_mean.device))
        bn.register_buffer("route_mean", bn.running_mean.detach().clone().unsqueeze(0).repeat(k, 1))
        bn.register_buffer("route_var", bn.running_var.detach().clone().unsqueeze(0).repeat(k, 1))
        bn.__class__ = _route_class(type(bn))
        bn._route_bn_state = state
        bn._rows = rows[key]
        bn._owner = owners[key]
        bn._sums = {}
        bn._loaded_row = -1
        bn._skip_row0 = False
    return state


@torch.no_grad()
def recalibrate_route_bn(
    snnet: Any,
    batches: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    anchors_only: bool = False,
    anchor_rows: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Re-estimate the BatchNorm statistics of every route on the same ``batches``.

    One pass over ``batches`` (a loader streams; nothing is kept): every
    route runs on every batch, normalising with batch statistics as in
    training, while each layer sums the moments of its inputs into the rows
    that route owns.

    Args:
        snnet: An SN-Net; :meth:`SNNet.enable_route_bn` is applied if it was not.
        batches: Inputs, or ``(inputs, target)`` pairs.
        device: Where the inputs go (default: where the SN-Net is).
        anchors_only: Run only the anchor routes and give every row of a
            layer its anchor's new statistics (adapting the anchors to the
            data before the stitching layers are fitted: the routes'
            own statistics need trained stitches).
        anchor_rows: Also re-estimate row 0 of every layer (its anchor's
            statistics); ``False`` keeps them (anchors trained with frozen
            BatchNorm) and re-estimates only the rows of layers that run
            after a stitch.
        on_batch: Called with the 0-based index of each batch when it is done.

    Returns:
        The number of batches used.
    """
    from .anchors import device_of, to_device

    state = snnet.enable_route_bn()
    dev = torch.device(device) if device is not None else device_of(snnet)
    modes = [(m, m.training) for m in snnet.modules()]
    snnet.eval()
    state.collecting = True
    for bn in route_bn_layers(snnet):
        bn._skip_row0 = not anchor_rows
    routes = [i for i, r in enumerate(snnet.routes) if r.is_anchor or not anchors_only]
    n = 0
    try:
        for b in batches:
            inputs = to_device(b[0] if isinstance(b, (tuple, list)) else b, dev)
            for rid in routes:
                snnet.forward_route(inputs, rid)
            if on_batch is not None:
                on_batch(n)
            n += 1
    finally:
        state.collecting = False
        state.route = None
        for m, flag in modes:
            m.training = flag
    if n:
        for bn in route_bn_layers(snnet):
            bn._finish_collect(spread=anchors_only)
    return n


def plain_batchnorm(module: nn.Module, route: int) -> None:
    """Turn the per-route BatchNorm layers inside ``module`` into plain ones holding ``route``'s statistics."""
    for bn in route_bn_layers(module):
        row = bn._rows[route]
        with torch.no_grad():
            bn.running_mean.copy_(bn.route_mean[row])
            bn.running_var.copy_(bn.route_var[row])
        for name in ("route_rows", "route_mean", "route_var"):
            delattr(bn, name)  # nn.Module drops the buffer
        for name in ("_route_bn_state", "_rows", "_owner", "_sums", "_loaded_row", "_skip_row0"):
            bn.__dict__.pop(name, None)
        bn.__class__ = next(c for c in type(bn).__mro__[1:] if not issubclass(c, _RouteBNMixin))
