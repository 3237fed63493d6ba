"""Assembling an SN-Net from anchors, a stitch space and a stitching-layer type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .anchors import Anchor, anchor_name
from .errors import PluginError, ShapeMismatchError, SpecError, StitchframeError, UnknownNameError, plugin_call
from .graph import ActivationSpec
from .plugins import Registries, load_registries, unknown_source_error
from .registry import Entry
from .routes import Link, Route
from .snnet import SNNet, stitch_key
from .spec import AnchorSpec, Spec, structure_options
from .stitch_layers import StitchJoin, StitchLayer
from .stitch_spaces import SpaceContext, space_routes
from .validation import AUTO_LAYER, adapter_for, registries_or_default, validate_spec

__all__ = ["load_anchor", "choose_layer", "build_snnet", "assemble", "validate_spec", "AUTO_LAYER"]


def load_anchor(
    spec: AnchorSpec | str,
    registries: Registries | None = None,
    *,
    where: str = "anchors[0]",
    structure_only: bool = False,
) -> Anchor:
    """Load one anchor through the adapter that owns its source prefix.

    Sources no registered prefix claims go to the ``stitchframe_resolve_anchor``
    hook before failing.  The adapter's loader is called as
    ``load(identifier, options, registries, structure_only=...)``
    (:class:`stitchframe.AnchorLoader`), so it can load other anchors or
    datasets with these registries.

    The anchor records how to build its modules again in ``anchor.structure``
    (``(source, options)``): what its adapter set, else ``spec``'s source and
    options.  :func:`stitchframe.export_route` writes it down, so
    :func:`stitchframe.load_route` rebuilds an exported route's modules with
    ``structure_only=True``.

    Args:
        spec: An :class:`AnchorSpec` or a source string.
        registries: The registries (default: all installed plugins).
        where: Spec path for error messages.
        structure_only: Build only the modules, on the meta device, without
            reading or downloading weights (their values are to be loaded
            afterwards): the adapter's loader is called with
            ``structure_only=True`` inside ``torch.device("meta")``.  Sources
            resolved by the ``stitchframe_resolve_anchor`` hook are loaded as
            usual, weights included.

    Raises:
        UnknownNameError: No adapter or resolver claims the source.
        SpecError: The options do not fit the adapter's ``Options``.
        PluginError: The adapter raised, or returned something that is not an Anchor.
    """
    regs = registries_or_default(registries)
    if isinstance(spec, str):
        spec = AnchorSpec(source=spec)
    entry, ident = adapter_for(spec.source, regs)
    if entry is not None:
        options = structure_options(entry.options, spec.options, f"{where}.options")
        with plugin_call(f"{where} ({spec.source!r})", (where,),
                          f"Plugin {entry.plugin!r} failed to load anchor {spec.source!r} at {where}"):
            if structure_only:
                with torch.device("meta"):  # the modules cost no memory until a route's weights fill them
                    anchor = entry.obj(ident, options, regs, structure_only=True)
            else:
                anchor = entry.obj(ident, options, regs, structure_only=False)
        origin = f"plugin {entry.plugin!r} (adapter {entry.name!r})"
    else:
        anchor = regs.resolve_anchor(spec.source, dict(spec.options))
        if anchor is None:
            raise unknown_source_error(spec.source, regs, where)
        origin = "hook 'stitchframe_resolve_anchor'"
    if not isinstance(anchor, Anchor):
        raise PluginError(
            f"{origin} returned {type(anchor).__name__} for {spec.source!r} at {where}; it must return a stitchframe.Anchor"
        )
    if spec.name is not None:
        anchor.name = spec.name
    elif not anchor.name:
        anchor.name = anchor_name(ident)
    anchor.source = anchor.source or spec.source
    if anchor.structure is None:
        anchor.structure = (spec.source, dict(spec.options))
    return anchor


def choose_layer(src: ActivationSpec, dst: ActivationSpec) -> str:
    """The ``auto`` layer type: ``conv1x1`` between maps, ``linear`` otherwise."""
    return "conv1x1" if src.layout == "map" and dst.layout == "map" else "linear"


def _layer_entry(layer: str, regs: Registries, src: ActivationSpec, dst: ActivationSpec, where: str) -> Entry:
    name = choose_layer(src, dst) if layer == AUTO_LAYER else layer
    try:
        return regs.stitch_layers.get(name, where=where)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{exc}{' Or use auto.' if layer != AUTO_LAYER else ''}") from None


class LayerFactory:
    """Resolves, checks and builds the stitching layer of each stitch for :func:`build_snnet`."""

    def __init__(self, anchors: Sequence[Anchor], layer: str, layer_options: Any, regs: Registries, where: str) -> None:
        self.by_name = {a.name: a for a in anchors}
        self.layer, self.layer_options, self.regs, self.where = layer, layer_options, regs, where
        self._options: dict[str, Any] = {}
        self.rejected: tuple[str, int, str, int, str, str] | None = None  # the first stitch the layer cannot bridge

    def specs(self, src: str, p: int, dst: str, q: int) -> tuple[ActivationSpec, ActivationSpec]:
        return self.by_name[src].graph.spec_at(p), self.by_name[dst].graph.spec_at(q)

    def entry(self, s: ActivationSpec, d: ActivationSpec, layer: str | None = None) -> Entry:
        return _layer_entry(layer or self.layer, self.regs, s, d, f"{self.where}.layer")

    def options_for(self, entry: Entry) -> Any:
        if entry.name not in self._options:
            opts = self.layer_options
            if isinstance(opts, Mapping) or opts is None:
                opts = structure_options(entry.options, dict(opts or {}), f"{self.where}.layer_options")
            self._options[entry.name] = opts
        return self._options[entry.name]

    def can_stitch(self, src: str, p: int, dst: str, q: int) -> bool:
        s, d = self.specs(src, p, dst, q)
        entry = self.entry(s, d)
        reason = entry.obj.supports(s, d)
        if reason is not None and self.rejected is None:
            self.rejected = (src, p, dst, q, entry.name, reason)
        return reason is None

    def mismatch(self, src: str, p: int, dst: str, q: int, name: str, reason: str) -> ShapeMismatchError:
        """The error for a stitch layer ``name`` cannot bridge: both block names and activation shapes."""
        s, d = self.specs(src, p, dst, q)
        return ShapeMismatchError(
            f"Stitch {self.by_name[src].graph.name_at(p)} {s.describe()} -> {self.by_name[dst].graph.consumer_at(q)} "
            f"{d.describe()} cannot use stitching layer {name!r} (at {self.where}.layer): {reason}"
        )

    def build(self, entry: Entry, s: ActivationSpec, d: ActivationSpec) -> StitchLayer:
        with plugin_call(f"{self.where}.layer ({entry.name!r})", (f"{self.where}.",),
                          f"Plugin {entry.plugin!r} failed to build stitching layer {entry.name!r} for "
                          f"{s.describe()} -> {d.describe()}"):
            return entry.obj(s, d, self.options_for(entry))

    def make_stitch(self, src: str, p: int, dst: str, q: int) -> StitchLayer | None:
        """A fresh, anchor-initialised layer for a stitch (``None`` when the layer type cannot bridge it).

        This is ``SpaceContext.make_stitch``: the layer the engine would build for that one stitch.
        """
        s, d = self.specs(src, p, dst, q)
        entry = self.entry(s, d)
        if entry.obj.supports(s, d) is not None:
            return None
        layer = self.build(entry, s, d)
        key = stitch_key(src, p, dst, q)
        _init_from_anchors({key: layer}, {key: [StitchJoin(self.by_name[src], p, self.by_name[dst], q)]}, self.regs)
        return layer


def build_snnet(
    anchors: Sequence[Anchor],
    *,
    space: str = "snnet",
    space_options: Mapping[str, Any] | Any = None,
    layer: str = AUTO_LAYER,
    layer_options: Mapping[str, Any] | Any = None,
    final_norm: str = "keep",
    registries: Registries | None = None,
    where: str = "stitch",
    probe: Any = None,
    seed: int = 0,
    routes: Sequence[Route] | None = None,
) -> SNNet:
    """Build an SN-Net from loaded anchors.

    Args:
        anchors: The anchors (unique names).
        space: Registered stitch space.
        space_options: Its options (mapping or ``Options`` instance).
        layer: Registered stitching layer, or ``"auto"``.
        layer_options: Its options (mapping or ``Options`` instance).
        final_norm: ``"keep"`` or ``"skip_stitched"``.
        registries: The registries (default: all installed plugins).
        where: Spec path prefix for error messages.
        probe: Probe inputs for spaces that run the anchors to choose routes
            (batches of model inputs, or a callable ``probe(anchors)``
            returning them; see :class:`~stitchframe.stitch_spaces.SpaceContext`).
            Other spaces ignore it, and a callable is then never called.
        seed: Seed handed to the space (``SpaceContext.seed``).
        routes: Use these routes instead of running the space (a saved route
            table, e.g. ``[Route.from_dict(r) for r in table]``, so a space that
            chose its routes on data needs no data to rebuild them); they are
            checked and given stitching layers like generated ones.

    Raises:
        UnknownNameError: Unknown space or layer.
        ShapeMismatchError: The space produced a stitch the layer cannot bridge.
        PluginError: The space raised or produced something that is not a Route.
    """
    regs = registries_or_default(registries)
    by_name = {a.name: a for a in anchors}
    if len(by_name) != len(anchors):
        names = [a.name for a in anchors]
        raise SpecError(f"anchors: names {names} are not unique; set 'name:' on the anchors")
    space_entry = regs.stitch_spaces.get(space, where=f"{where}.space")
    if isinstance(space_options, Mapping) or space_options is None:
        space_options = structure_options(space_entry.options, dict(space_options or {}), f"{where}.space_options")
    layers = LayerFactory(anchors, layer, layer_options, regs, where)
    context = SpaceContext(
        probe=probe, make_stitch=layers.make_stitch, seed=seed, final_norm=final_norm, anchors=list(anchors)
    )
    with plugin_call(f"{where}.space ({space!r})", (f"{where}.",),
                      f"Plugin {space_entry.plugin!r} raised in stitch space {space!r} (StitchSpace.routes)"):
        if routes is not None:
            generated = list(routes)
        else:
            generated = space_routes(space_entry.obj(space_options), list(anchors), layers.can_stitch, context)
    stitches: dict[str, StitchLayer] = {}
    joins: dict[str, list[StitchJoin]] = {}
    key_specs: dict[str, tuple[ActivationSpec, ActivationSpec, str]] = {}
    chosen: list[Route] = []
    seen: set[Route] = set()
    for route in generated:
        if not isinstance(route, Route):
            raise PluginError(
                f"Stitch space {space!r} from plugin {space_entry.plugin!r} yielded {type(route).__name__}; "
                "StitchSpace.routes must yield stitchframe.Route objects"
            )
        links = []
        for src, p, dst, q, link in route.stitch_points():
            for name in (src, dst):
                if name not in by_name:
                    raise PluginError(f"Stitch space {space!r} produced route {route} with unknown anchor {name!r}")
            s, d = layers.specs(src, p, dst, q)
            entry = layers.entry(s, d, link.layer)
            reason = entry.obj.supports(s, d)
            if reason is not None:
                raise layers.mismatch(src, p, dst, q, entry.name, reason)
            key = link.key or stitch_key(src, p, dst, q)
            if key in key_specs:
                ks, kd, kname = key_specs[key]
                if (ks, kd, kname) != (s, d, entry.name):
                    raise ShapeMismatchError(
                        f"Stitch space {space!r} shares layer {key!r} between {ks.describe()} -> {kd.describe()} "
                        f"and {s.describe()} -> {d.describe()}; shared stitches need equal specs"
                    )
            else:
                key_specs[key] = (s, d, entry.name)
                stitches[key] = layers.build(entry, s, d)
            join = StitchJoin(by_name[src], p, by_name[dst], q)
            if join not in joins.setdefault(key, []):
                joins[key].append(join)
            links.append(Link(layer=entry.name, key=link.key))
        resolved = Route(route.segments, links, meta=dict(route.meta))
        if resolved not in seen:
            seen.add(resolved)
            chosen.append(resolved)
    if not chosen:
        raise SpecError(
            f"{where}.space: stitch space {space!r} produced no routes for anchors {list(by_name)} with layer {layer!r}"
        )
    if layers.rejected is not None and not any(r.links for r in chosen):
        raise ShapeMismatchError(
            f"{layers.mismatch(*layers.rejected)}; no stitch of space {space!r} fits it, so the SN-Net would hold "
            f"only its anchors. Use layer: auto or a stitching layer that bridges these activations"
        )
    _init_from_anchors(stitches, joins, regs)
    return SNNet(anchors, chosen, stitches, final_norm=final_norm)


def _init_from_anchors(
    stitches: Mapping[str, StitchLayer], joins: Mapping[str, list[StitchJoin]], regs: Registries
) -> None:
    """Call every layer's :meth:`~stitchframe.StitchLayer.init_from_anchors`; failures name the plugin."""
    for key, layer in stitches.items():
        try:
            layer.init_from_anchors(joins[key])
        except StitchframeError:
            raise
        except Exception as exc:
            entry = next((e for e in regs.stitch_layers if e.obj is type(layer)), None)
            plugin = entry.plugin if entry is not None else type(layer).__module__
            raise PluginError(
                f"Plugin {plugin!r} failed to initialise stitching layer {key!r} "
                f"({type(layer).__name__}.init_from_anchors): {type(exc).__name__}: {exc}"
            ) from exc


def assemble(
    spec: Spec, registries: Registries | None = None, *, probe: Any = None, routes: Sequence[Route] | None = None
) -> SNNet:
    """Load the spec's anchors and build its SN-Net (no calibration or training).

    Args:
        spec: The parsed spec.
        registries: The registries (default: all installed plugins).
        probe: Probe inputs for spaces that choose routes on data (batches,
            or a callable ``probe(anchors)`` returning them; see
            :func:`build_snnet`).  The space gets the spec's ``seed``.
        routes: Use these routes instead of running the space (see :func:`build_snnet`).
    """
    regs = registries_or_default(registries)
    anchors = [load_anchor(a, regs, where=f"anchors[{i}]") for i, a in enumerate(spec.anchors)]
    st = spec.stitch
    return build_snnet(
        anchors,
        space=st.space,
        space_options=st.space_options,
        layer=st.layer,
        layer_options=st.layer_options,
        final_norm=st.final_norm,
        registries=regs,
        probe=probe,
        seed=spec.seed,
        routes=routes,
    )
