"""``check_stitch_space``: a stitch-space type against the contract."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..anchors import Anchor, device_of, to_device
from ..engine import LayerFactory, build_snnet
from ..plugins import Registries, get_plugin_manager, load_registries
from ..routes import Route
from ..stitch_spaces import SpaceContext, StitchSpace, space_routes
from ._common import ConformanceError, eval_mode, fail, first_tensor

__all__ = ["check_stitch_space"]


def check_stitch_space(
    cls: type,
    anchors: Sequence[Anchor],
    options: Any = None,
    *,
    layer: str = "auto",
    build: bool = True,
    inputs: Any = None,
    registries: Registries | None = None,
    probe: Any = None,
    seed: int = 0,
) -> list[Route]:
    """Check a stitch-space type on a family of anchors.

    Checks that ``routes`` yields :class:`~stitchframe.Route` objects over the
    given anchors that start at block 0, end at the last block, stay within
    each anchor's depth, are unique, print and round-trip through
    ``to_dict``/``from_dict``; that it yields the same routes in the same
    order every time (route ids depend on it); that links sharing a key join
    equal specs; that it asks ``can_stitch`` before every stitch and yields
    none it refused.  With ``build`` it also builds an SN-Net with ``layer``
    and runs every route once.  A space whose ``routes`` takes a ``context``
    gets one, as from the engine: ``probe``, ``seed`` and a ``make_stitch``
    that builds ``layer``.

    Args:
        cls: The :class:`~stitchframe.StitchSpace` subclass.
        anchors: A family of (small) anchors.
        options: An instance of ``cls.Options`` (default: its defaults).
        layer: Stitching layer used by ``build``.
        build: Build the SN-Net and run each route on ``inputs``.
        inputs: Inputs for ``build`` (default: the first anchor's ``example_inputs``).
        registries: Where ``build`` finds ``layer`` (default: the built-ins only;
            pass :func:`check_plugin`'s result to use your plugin's layers).
        probe: Probe batches handed to the space in its ``context``
            (:class:`~stitchframe.stitch_spaces.SpaceContext`).
        seed: Seed handed to the space in its ``context``.

    Returns:
        The routes yielded when every stitch is allowed.

    Raises:
        ConformanceError: The space breaks the contract.
    """
    if not (isinstance(cls, type) and issubclass(cls, StitchSpace)):
        fail(f"check_stitch_space got {cls!r}; a stitch space must subclass stitchframe.StitchSpace")
    options = options if options is not None else cls.Options()
    anchors = list(anchors)
    asked: set[tuple[str, int, str, int]] = set()
    regs = _base_registries(registries)
    layers = LayerFactory(anchors, layer, None, regs, "check_stitch_space")

    def run(can_stitch: Callable[[str, int, str, int], bool]) -> list[Route]:
        context = SpaceContext(probe=probe, make_stitch=layers.make_stitch, seed=seed, anchors=anchors)
        return _yield_routes(cls, options, anchors, can_stitch, context)

    def allow_all(src: str, p: int, dst: str, q: int) -> bool:
        asked.add((src, p, dst, q))
        return True

    routes = run(allow_all)
    if not routes:
        fail(f"{cls.__name__}: yields no routes for anchors {[a.name for a in anchors]}")
    for route in routes:
        _check_route(cls, route, anchors, asked)
    _check_unique(cls, routes)
    if run(lambda *a: True) != routes:
        fail(f"{cls.__name__}: yields different routes (or another order) on a second call; route ids depend on it")
    _check_shared_keys(cls, routes, {a.name: a for a in anchors})
    _check_refusals(cls, run, sorted(asked))
    if build:
        _build_and_run(cls, options, anchors, layer, inputs, regs, probe, seed)
    return routes


def _base_registries(registries: Registries | None) -> Registries:
    return registries if registries is not None else load_registries(get_plugin_manager(load_entrypoints=False))


def _yield_routes(cls, options, anchors, can_stitch: Callable[[str, int, str, int], bool], context) -> list[Route]:
    try:
        return space_routes(cls(options), list(anchors), can_stitch, context)
    except Exception as exc:  # a Route that breaks its own rules raises StitchframeError here too
        raise ConformanceError(f"{cls.__name__}.routes raised {type(exc).__name__}: {exc}") from exc


def _check_route(cls, route: Any, anchors: Sequence[Anchor], asked: set) -> None:
    depths = {a.name: a.depth for a in anchors}
    if not isinstance(route, Route):
        fail(f"{cls.__name__}: yielded {type(route).__name__}; routes() must yield stitchframe.Route objects")
    text = str(route)
    if not text:
        fail(f"{cls.__name__}: a route prints as an empty string")
    for seg in route.segments:
        if seg.anchor not in depths:
            fail(f"{cls.__name__}: route {text} uses anchor {seg.anchor!r}, not one of {sorted(depths)}")
        if seg.end > depths[seg.anchor]:
            fail(f"{cls.__name__}: route {text} runs {seg} past {seg.anchor}'s {depths[seg.anchor]} blocks")
    last = route.segments[-1]
    if last.end != depths[last.anchor]:
        fail(f"{cls.__name__}: route {text} must end at {last.anchor}'s last block ({depths[last.anchor]})")
    for src, p, dst, q, _link in route.stitch_points():
        if (src, p, dst, q) not in asked:
            fail(f"{cls.__name__}: route {text} stitches {src}:{p} -> {dst}:{q} without asking can_stitch")
    try:
        data = json.loads(json.dumps(route.to_dict()))
    except (TypeError, ValueError) as exc:
        raise ConformanceError(f"{cls.__name__}: route {text} is not JSON-serialisable (meta?): {exc}") from exc
    if Route.from_dict(data) != route:
        fail(f"{cls.__name__}: route {text} does not round-trip through to_dict/from_dict")


def _check_unique(cls, routes: list[Route]) -> None:
    seen: set[Route] = set()
    for route in routes:
        if route in seen:
            fail(f"{cls.__name__}: yields route {route} twice; each route must appear once")
        seen.add(route)


def _check_shared_keys(cls, routes: list[Route], by_name: dict[str, Anchor]) -> None:
    specs: dict[str, tuple] = {}
    for route in routes:
        for src, p, dst, q, link in route.stitch_points():
            if link.key is None:
                continue
            pair = (by_name[src].graph.spec_at(p), by_name[dst].graph.spec_at(q))
            first = specs.setdefault(link.key, pair)
            if first != pair:
                shapes = [f"{a.describe()} -> {b.describe()}" for a, b in (first, pair)]
                fail(
                    f"{cls.__name__}: link key {link.key!r} is shared by {shapes[0]} and {shapes[1]}; "
                    "only equal spec pairs can share a layer"
                )


def _check_refusals(cls, run, asked: list[tuple[str, int, str, int]]) -> None:
    refused = set(asked[::2])
    for allowed, why in ((lambda *pt: pt not in refused, "half"), (lambda *pt: False, "all")):
        for route in run(allowed):
            for src, p, dst, q, _link in route.stitch_points():
                if not allowed(src, p, dst, q):
                    fail(
                        f"{cls.__name__}: with {why} of the stitches refused it still yields route {route} through "
                        f"{src}:{p} -> {dst}:{q}; skip the stitches can_stitch refuses"
                    )


def _build_and_run(cls, options, anchors, layer: str, inputs: Any, base: Registries, probe: Any, seed: int) -> None:
    regs = Registries(anchor_adapters=base.anchor_adapters, stitch_layers=base.stitch_layers, pm=base.pm)
    regs.stitch_spaces.register("space_under_test", cls, options=type(options), plugin="stitchframe.testing")
    net = build_snnet(
        anchors, space="space_under_test", space_options=options, layer=layer, registries=regs, probe=probe, seed=seed
    )
    device = device_of(anchors[0])
    net.to(device)  # new stitching layers join the anchors' device
    inputs = to_device(inputs if inputs is not None else anchors[0].example_inputs, device)
    with eval_mode(net):
        for i, route in enumerate(net.routes):
            out = first_tensor(net.forward_route(inputs, i), f"route {route}")
            if not torch.isfinite(out).all():
                fail(f"{cls.__name__}: route {i} ({route}) outputs NaN or infinite values")
