"""Conformance checks for plugin authors.

Run these from your plugin's tests, the way pytest and Hugging Face give
plugin authors ready-made checks::

    from stitchframe.testing import check_anchor, check_stitch_layer, check_stitch_space

    def test_my_adapter():
        model = build_my_model()
        check_anchor(load_my_anchor("my_model", MyOptions()), model=model)

Each check raises :class:`ConformanceError` (an :class:`AssertionError`, so
pytest shows it as a test failure) with a one-line message saying what is
wrong, where (anchor, block, route or parameter) and how to fix it.  They run
on CPU in seconds with small models; pass small specs and tiny anchors.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from .anchors import Anchor, _device_of, _to_device, count_flops
from .errors import PluginError, ShapeMismatchError, StitchframeError
from .graph import ActivationSpec
from .io import load_module_state, save_module
from .plugins import Registries, get_plugin_manager, load_registries
from .routes import Route, Segment
from .snnet import SNNet
from .stitch_layers import LeastSquaresStitch, StitchLayer
from .stitch_spaces import StitchSpace

__all__ = ["ConformanceError", "check_anchor", "check_stitch_layer", "check_stitch_space", "check_plugin"]


class ConformanceError(AssertionError):
    """A plugin object breaks the stitchframe contract (raised by the ``check_*`` helpers)."""


def _fail(message: str) -> None:
    raise ConformanceError(message)


@contextmanager
def _eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode, no grad; restore their modes afterwards."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    for m in present:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(present, modes):
            m.train(mode)


def _first_tensor(obj: Any, what: str) -> torch.Tensor:
    """The tensor to compare from a model output: a tensor, ``logits``, or the first element."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        if "logits" in obj:
            return _first_tensor(obj["logits"], what)
        for value in obj.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0], what)
    raise ConformanceError(
        f"{what} returned {type(obj).__name__}, which holds no tensor to compare; return a tensor, "
        "a mapping with 'logits', or a tuple whose first element is the output"
    )


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _unique_params(*modules: nn.Module | None) -> dict[int, nn.Parameter]:
    out: dict[int, nn.Parameter] = {}
    for m in modules:
        if m is not None:
            for p in m.parameters():
                out.setdefault(id(p), p)
    return out


# ---------------------------------------------------------------------------
# anchors
# ---------------------------------------------------------------------------
def check_anchor(
    anchor: Anchor,
    model: nn.Module | None = None,
    inputs: Any = None,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    flops_rtol: float = 1e-3,
) -> None:
    """Check an anchor built by an adapter.

    Checks that the block graph matches the modules (one node per block, the
    activation at every cut point has the spec the graph records, stages never
    decrease), that every block has positive FLOPs and the parameters of stem,
    blocks and head add up to the anchor's, that the anchor route runs inside
    an :class:`~stitchframe.SNNet` and its export unchanged.  With ``model``
    it also checks that the anchor route equals ``model(inputs)``, that the
    anchor's parameters are the model's own (shared, not copied), that each
    block outputs what the model computes at that module, and that the
    graph's FLOPs and parameters add up to the whole model's.

    Args:
        anchor: The anchor to check.
        model: The original model the adapter cut up (optional).
        inputs: Inputs to run (default: ``anchor.example_inputs``).
        atol: Absolute tolerance of output comparisons.
        rtol: Relative tolerance of output comparisons.
        flops_rtol: Relative tolerance between the graph's FLOPs and the model's.

    Raises:
        ConformanceError: The anchor breaks the contract.
    """
    if not isinstance(anchor, Anchor):
        _fail(f"check_anchor got {type(anchor).__name__}; an adapter must return a stitchframe.Anchor")
    if anchor.example_inputs is None:
        _fail(f"Anchor {anchor.name!r} has no example_inputs; pass a batch-1 example to Anchor(example_inputs=...)")
    try:
        graph = anchor.graph
    except StitchframeError as exc:
        raise ConformanceError(f"Anchor {anchor.name!r}: tracing the block graph failed: {exc}") from exc
    _check_graph_structure(anchor)
    device = _device_of(anchor)
    inputs = _to_device(inputs if inputs is not None else anchor.example_inputs, device)
    with _eval_mode(anchor, model):
        acts = anchor.activations(inputs, list(graph.positions()))
        for pos, x in acts.items():
            _check_activation(anchor, pos, x)
        out = _first_tensor(anchor(inputs), f"Anchor {anchor.name!r}")
        if not torch.isfinite(out).all():
            _fail(f"Anchor {anchor.name!r}: the anchor route's output holds NaN or infinite values")
        _check_in_snnet(anchor, inputs, out)
        if model is not None:
            _check_against_model(anchor, model, inputs, out, acts, atol=atol, rtol=rtol)
            _check_model_costs(anchor, model, flops_rtol)


def _check_graph_structure(anchor: Anchor) -> None:
    graph = anchor.graph
    name = anchor.name
    if graph.depth != anchor.depth or graph.nx.number_of_nodes() != anchor.depth + 2:
        _fail(f"Anchor {name!r}: the block graph has {graph.depth} blocks but the anchor has {anchor.depth}")
    stages = graph.stages()
    for pos in range(1, len(stages)):
        if stages[pos] < stages[pos - 1]:
            _fail(
                f"Anchor {name!r}: stage goes down from {stages[pos - 1]} to {stages[pos]} at "
                f"{graph.name_at(pos)}; stages must never decrease (pass Anchor(stages=...) in block order)"
            )
    for info in graph.blocks:
        if info.flops <= 0:
            _fail(
                f"Anchor {name!r}: {info.name} (module {info.path!r}) has {info.flops} FLOPs; torch's counter "
                "missed its computation (a fused or custom op?) or the block does nothing"
            )
    if graph.flops <= 0:
        _fail(f"Anchor {name!r}: the whole anchor counts {graph.flops} FLOPs")
    own = sum(p.numel() for p in _unique_params(anchor).values())
    if graph.params != own:
        _fail(
            f"Anchor {name!r}: stem, blocks and head hold {graph.params} parameters but the anchor holds {own}; "
            "a module is counted twice (shared between parts?) or held outside stem/blocks/norm/head/prepare"
        )


def _check_activation(anchor: Anchor, pos: int, x: Any) -> None:
    graph = anchor.graph
    where = graph.name_at(pos)
    if not isinstance(x, torch.Tensor):
        _fail(f"Anchor {anchor.name!r}: {where} returns {type(x).__name__}; blocks must return one tensor")
    try:
        graph.spec_at(pos).check(x, where=f"{where} (cut position {pos})")
    except ShapeMismatchError as exc:
        raise ConformanceError(f"Anchor {anchor.name!r}: {exc} The graph was traced on example_inputs.") from exc
    if not torch.isfinite(x).all():
        _fail(f"Anchor {anchor.name!r}: {where} (cut position {pos}) outputs NaN or infinite values")


def _check_in_snnet(anchor: Anchor, inputs: Any, out: torch.Tensor) -> None:
    route = Route([Segment(anchor.name, 0, anchor.depth)])
    net = SNNet([anchor], [route], {}).eval()
    for what, result in (("SNNet's anchor route", net(inputs)), ("the exported anchor route", net.export()(inputs))):
        got = _first_tensor(result, what)
        if got.shape != out.shape or not torch.equal(got, out):
            _fail(f"Anchor {anchor.name!r}: {what} differs from anchor(inputs); stem/blocks/head must be stateless")


def _check_against_model(anchor, model, inputs, out, acts, *, atol: float, rtol: float) -> None:
    name = anchor.name
    model_params = _unique_params(model)
    for pname, p in anchor.named_parameters():
        if id(p) not in model_params:
            _fail(
                f"Anchor {name!r}: parameter {pname!r} is not one of the model's; build the anchor from the "
                "model's own modules (do not copy or re-create them)"
            )
    captured = _run_with_block_hooks(anchor, model, inputs)
    expected = _first_tensor(captured.pop("__output__"), "The model")
    graph = anchor.graph
    for i, got in captured.items():
        mine = acts[i + 1]
        comparable = isinstance(got, torch.Tensor) and got.shape == mine.shape
        if comparable and not torch.allclose(mine, got, atol=atol, rtol=rtol):
            _fail(
                f"Anchor {name!r}: {graph.blocks[i].name} (module {graph.blocks[i].path!r}) outputs differently "
                f"when run by the anchor than inside the model (max |diff| {_max_diff(mine, got):.3g}); "
                "the adapter runs it with other inputs, in another order, or without an argument (a mask?)"
            )
    if expected.shape != out.shape:
        _fail(f"Anchor {name!r}: the anchor route outputs {tuple(out.shape)}, the model {tuple(expected.shape)}")
    if not torch.allclose(out, expected, atol=atol, rtol=rtol):
        _fail(
            f"Anchor {name!r}: the anchor route differs from the model (max |diff| {_max_diff(out, expected):.3g}); "
            "check that stem, blocks, norm and head cover the model's forward in order"
        )


def _run_with_block_hooks(anchor: Anchor, model: nn.Module, inputs: Any) -> dict:
    """Run ``model(inputs)`` recording the output of each anchor block that is one of its modules."""
    modules = {id(m) for m in model.modules()}
    calls: dict[int, list] = {}
    handles = []
    for i, blk in enumerate(anchor.blocks):
        if id(blk) in modules:
            calls[i] = []
            handles.append(blk.register_forward_hook(lambda _m, _a, o, i=i: calls[i].append(o)))
    try:
        result: dict[Any, Any] = {"__output__": model(inputs)}
    finally:
        for h in handles:
            h.remove()
    result.update({i: outs[0] for i, outs in calls.items() if len(outs) == 1})
    return result


def _check_model_costs(anchor: Anchor, model: nn.Module, flops_rtol: float) -> None:
    graph = anchor.graph
    example = _to_device(anchor.example_inputs, _device_of(anchor))
    _, model_flops = count_flops(model, example)
    if abs(model_flops - graph.flops) > flops_rtol * max(model_flops, 1):
        _fail(
            f"Anchor {anchor.name!r}: stem, blocks and head count {graph.flops} FLOPs but the model counts "
            f"{model_flops} on example_inputs; a part of the model's forward is missing or counted twice"
        )
    model_params = sum(p.numel() for p in _unique_params(model).values())
    if graph.params != model_params:
        _fail(
            f"Anchor {anchor.name!r}: stem, blocks and head hold {graph.params} parameters but the model holds "
            f"{model_params}; a module of the model is missing from the anchor"
        )


# ---------------------------------------------------------------------------
# stitching layers
# ---------------------------------------------------------------------------
def check_stitch_layer(
    cls: type,
    src: ActivationSpec,
    dst: ActivationSpec,
    options: Any = None,
    *,
    batch: int = 4,
    fit: bool = True,
    export: bool = True,
    rtol: float = 1e-3,
    seed: int = 0,
) -> None:
    """Check a stitching-layer type on one pair of activation specs.

    Checks that ``supports(src, dst)`` accepts the pair, the output has the
    ``dst`` shape and is finite, samples do not mix within a batch (eval
    mode), gradients reach every trainable parameter and the input and are
    finite and not all zero, least squares recovers a map the layer can
    represent (``fit``), and that the layer survives ``torch.export``, a
    safetensors round trip and :meth:`~stitchframe.StitchLayer.merge`
    (``export``).

    Args:
        cls: The :class:`~stitchframe.StitchLayer` subclass.
        src: Spec of the incoming activation.
        dst: Spec of the activation to produce.
        options: An instance of ``cls.Options`` (default: its defaults).
        batch: Batch size of the test inputs.
        fit: Check calibration.  Turn off for layers that are not calibrated.
        export: Check export, safetensors round trip and merge.
        rtol: Relative error allowed when recovering a known map.
        seed: Seed of the random inputs and weights.

    Raises:
        ConformanceError: The layer breaks the contract.
    """
    if not (isinstance(cls, type) and issubclass(cls, StitchLayer)):
        _fail(f"check_stitch_layer got {cls!r}; a stitching layer must subclass stitchframe.StitchLayer")
    pair = f"{cls.__name__} {src.describe()} {src.layout} -> {dst.describe()} {dst.layout}"
    reason = cls.supports(src, dst)
    if reason is not None:
        if not isinstance(reason, str):
            _fail(f"{cls.__name__}.supports returned {reason!r}; return None or a one-line reason (str)")
        _fail(f"{pair}: supports() refuses the pair: {reason}")
    options = options if options is not None else cls.Options()
    torch.manual_seed(seed)
    layer = cls(src, dst, options)
    x = src.example(batch)
    _check_layer_forward(layer, x, pair)
    _check_layer_gradients(layer, x, pair)
    if fit:
        _check_layer_fit(cls, src, dst, options, pair, batch=batch, rtol=rtol, seed=seed)
    if export:
        _check_layer_export(cls, layer, x, pair, rtol=rtol)


def _check_layer_forward(layer: StitchLayer, x: torch.Tensor, pair: str) -> None:
    y = layer(x)
    if not isinstance(y, torch.Tensor):
        _fail(f"{pair}: forward returned {type(y).__name__}, not a tensor")
    try:
        layer.dst.check(y, where=f"the output of {type(layer).__name__}")
    except ShapeMismatchError as exc:
        raise ConformanceError(f"{pair}: {exc}") from exc
    if not torch.isfinite(y).all():
        _fail(f"{pair}: the output holds NaN or infinite values")
    with _eval_mode(layer):
        whole, first = layer(x), layer(x[:1])
    if not torch.allclose(whole[:1], first, atol=1e-5, rtol=1e-4):
        _fail(f"{pair}: in eval mode a sample's output depends on the rest of the batch; work per sample")


def _check_layer_gradients(layer: StitchLayer, x: torch.Tensor, pair: str) -> None:
    trainable = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    if not trainable:
        _fail(f"{pair}: the layer has no trainable parameters; training could not adapt it")
    layer.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    out = layer(xg)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    (out * weights).sum().backward()
    missing = [n for n, p in trainable if p.grad is None]
    if missing:
        _fail(f"{pair}: trainable parameter(s) {', '.join(missing)} get no gradient; use them in forward or freeze")
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    if bad:
        _fail(f"{pair}: the gradient of {', '.join(bad)} holds NaN or infinite values")
    if all(float(p.grad.abs().max()) == 0.0 for _, p in trainable):
        _fail(f"{pair}: every parameter gradient is zero; the output does not depend on the weights")
    if xg.grad is None or float(xg.grad.abs().max()) == 0.0:
        _fail(f"{pair}: no gradient reaches the input, so the front anchor cannot train through the stitch")
    layer.zero_grad(set_to_none=True)


def _fit_examples(layer: LeastSquaresStitch, src: ActivationSpec, batch: int) -> tuple[int, bool]:
    """Examples that give every least-squares sub-problem 4x more independent rows than unknowns (capped).

    Returns:
        The number of examples, and whether the problems are then determined.
    """
    rows = layer.ls_rows(src.example(1))
    rank = {k: max(int(torch.linalg.matrix_rank(r.double())), 1) for k, r in rows.items()}
    need = max(math.ceil(4 * (r.shape[1] + 1) / rank[k]) for k, r in rows.items())
    n = min(max(batch, need), 256)
    return n, all(n * rank[k] > r.shape[1] + 1 for k, r in rows.items())


def _check_layer_fit(cls, src, dst, options, pair: str, *, batch: int, rtol: float, seed: int) -> None:
    torch.manual_seed(seed + 1)
    teacher = cls(src, dst, options)
    n, determined = batch, False
    if isinstance(teacher, LeastSquaresStitch):
        n, determined = _fit_examples(teacher, src, batch)
        rows = teacher.ls_rows(src.example(2))
        targets = teacher.ls_targets(dst.example(2))
        gen = torch.Generator().manual_seed(seed + 2)
        teacher.ls_assign(
            {
                k: torch.randn(r.shape[1] + 1, targets[k].shape[1], generator=gen, dtype=torch.float64)
                / math.sqrt(r.shape[1])
                for k, r in rows.items()
            }
        )
    x_fit, x_test = src.example(n), src.example(batch)
    with _eval_mode(teacher):
        y_fit, y_test = teacher(x_fit), teacher(x_test)
    torch.manual_seed(seed + 3)
    student = cls(src, dst, options)
    with torch.no_grad():
        student.fit(x_fit, y_fit)
    bad = [name for name, p in student.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        _fail(f"{pair}: after fit, parameter(s) {', '.join(bad)} hold NaN or infinite values")
    x_eval, y_eval = (x_test, y_test) if determined else (x_fit, y_fit)
    with _eval_mode(student):
        err = _rel_err(student(x_eval), y_eval)
    if not err <= rtol:
        _fail(
            f"{pair}: least squares does not recover a map the layer can represent (relative error {err:.3g} > "
            f"{rtol:g}); check fit_update/fit_end (or ls_rows/ls_targets/ls_assign)"
        )


def _check_layer_export(cls, layer: StitchLayer, x: torch.Tensor, pair: str, *, rtol: float) -> None:
    layer.eval()
    with torch.no_grad():
        ref = layer(x)
    try:
        exported = torch.export.export(layer, (x,))
    except Exception as exc:
        raise ConformanceError(f"{pair}: torch.export.export fails: {type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        if not torch.allclose(exported.module()(x), ref, atol=1e-5, rtol=1e-4):
            _fail(f"{pair}: the torch.export program computes something else than the layer")
    with tempfile.TemporaryDirectory() as tmp:
        path = save_module(layer, Path(tmp) / "layer.safetensors", kind="stitch")
        clone = cls(layer.src, layer.dst, layer.options)
        load_module_state(clone, path)
    clone.eval()
    with torch.no_grad():
        if not torch.equal(clone(x), ref):
            _fail(f"{pair}: a copy loaded from safetensors computes something else; keep all state in the state_dict")
        merged = copy.deepcopy(layer)
        merged.merge()
        err = _rel_err(merged(x), ref)
    if not err <= rtol:
        _fail(f"{pair}: merge() changes the output (relative error {err:.3g}); it must fold, not alter, the map")


# ---------------------------------------------------------------------------
# stitch spaces
# ---------------------------------------------------------------------------
def check_stitch_space(
    cls: type,
    anchors: Sequence[Anchor],
    options: Any = None,
    *,
    layer: str = "auto",
    build: bool = True,
    inputs: Any = None,
    registries: Registries | None = None,
) -> list[Route]:
    """Check a stitch-space type on a family of anchors.

    Checks that ``routes`` yields :class:`~stitchframe.Route` objects over the
    given anchors that start at block 0, end at the last block, stay within
    each anchor's depth, are unique, print and round-trip through
    ``to_dict``/``from_dict``; that it yields the same routes in the same
    order every time (route ids depend on it); that links sharing a key join
    equal specs; that it asks ``can_stitch`` before every stitch and yields
    none it refused.  With ``build`` it also builds an SN-Net with the
    registered built-in layers and runs every route once.

    Args:
        cls: The :class:`~stitchframe.StitchSpace` subclass.
        anchors: A family of (small) anchors.
        options: An instance of ``cls.Options`` (default: its defaults).
        layer: Stitching layer used by ``build``.
        build: Build the SN-Net and run each route on ``inputs``.
        inputs: Inputs for ``build`` (default: the first anchor's ``example_inputs``).
        registries: Where ``build`` finds ``layer`` (default: the built-ins only;
            pass :func:`check_plugin`'s result to use your plugin's layers).

    Returns:
        The routes yielded when every stitch is allowed.

    Raises:
        ConformanceError: The space breaks the contract.
    """
    if not (isinstance(cls, type) and issubclass(cls, StitchSpace)):
        _fail(f"check_stitch_space got {cls!r}; a stitch space must subclass stitchframe.StitchSpace")
    options = options if options is not None else cls.Options()
    anchors = list(anchors)
    asked: set[tuple[str, int, str, int]] = set()

    def allow_all(src: str, p: int, dst: str, q: int) -> bool:
        asked.add((src, p, dst, q))
        return True

    routes = _yield_routes(cls, options, anchors, allow_all)
    if not routes:
        _fail(f"{cls.__name__}: yields no routes for anchors {[a.name for a in anchors]}")
    for route in routes:
        _check_route(cls, route, anchors, asked)
    _check_unique(cls, routes)
    if _yield_routes(cls, options, anchors, lambda *a: True) != routes:
        _fail(f"{cls.__name__}: yields different routes (or another order) on a second call; route ids depend on it")
    _check_shared_keys(cls, routes, {a.name: a for a in anchors})
    _check_refusals(cls, options, anchors, sorted(asked))
    if build:
        _build_and_run(cls, options, anchors, layer, inputs, registries)
    return routes


def _yield_routes(cls, options, anchors, can_stitch: Callable[[str, int, str, int], bool]) -> list[Route]:
    try:
        return list(cls(options).routes(list(anchors), can_stitch))
    except StitchframeError:
        raise
    except Exception as exc:
        raise ConformanceError(f"{cls.__name__}.routes raised {type(exc).__name__}: {exc}") from exc


def _check_route(cls, route: Any, anchors: Sequence[Anchor], asked: set) -> None:
    depths = {a.name: a.depth for a in anchors}
    if not isinstance(route, Route):
        _fail(f"{cls.__name__}: yielded {type(route).__name__}; routes() must yield stitchframe.Route objects")
    text = str(route)
    if not text:
        _fail(f"{cls.__name__}: a route prints as an empty string")
    for seg in route.segments:
        if seg.anchor not in depths:
            _fail(f"{cls.__name__}: route {text} uses anchor {seg.anchor!r}, not one of {sorted(depths)}")
        if seg.end > depths[seg.anchor]:
            _fail(f"{cls.__name__}: route {text} runs {seg} past {seg.anchor}'s {depths[seg.anchor]} blocks")
    last = route.segments[-1]
    if last.end != depths[last.anchor]:
        _fail(f"{cls.__name__}: route {text} must end at {last.anchor}'s last block ({depths[last.anchor]})")
    for src, p, dst, q, _link in route.stitch_points():
        if (src, p, dst, q) not in asked:
            _fail(f"{cls.__name__}: route {text} stitches {src}:{p} -> {dst}:{q} without asking can_stitch")
    try:
        data = json.loads(json.dumps(route.to_dict()))
    except (TypeError, ValueError) as exc:
        raise ConformanceError(f"{cls.__name__}: route {text} is not JSON-serialisable (meta?): {exc}") from exc
    if Route.from_dict(data) != route:
        _fail(f"{cls.__name__}: route {text} does not round-trip through to_dict/from_dict")


def _check_unique(cls, routes: list[Route]) -> None:
    seen: set[Route] = set()
    for route in routes:
        if route in seen:
            _fail(f"{cls.__name__}: yields route {route} twice; each route must appear once")
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
                _fail(
                    f"{cls.__name__}: link key {link.key!r} is shared by {shapes[0]} and {shapes[1]}; "
                    "only equal spec pairs can share a layer"
                )


def _check_refusals(cls, options, anchors, asked: list[tuple[str, int, str, int]]) -> None:
    refused = set(asked[::2])
    for allowed, why in ((lambda *pt: pt not in refused, "half"), (lambda *pt: False, "all")):
        for route in _yield_routes(cls, options, anchors, allowed):
            for src, p, dst, q, _link in route.stitch_points():
                if not allowed(src, p, dst, q):
                    _fail(
                        f"{cls.__name__}: with {why} of the stitches refused it still yields route {route} through "
                        f"{src}:{p} -> {dst}:{q}; skip the stitches can_stitch refuses"
                    )


def _build_and_run(cls, options, anchors, layer: str, inputs: Any, registries: Registries | None) -> None:
    from .engine import build_snnet

    base = registries if registries is not None else load_registries(get_plugin_manager(load_entrypoints=False))
    regs = Registries(anchor_adapters=base.anchor_adapters, stitch_layers=base.stitch_layers, pm=base.pm)
    regs.stitch_spaces.register("space_under_test", cls, options=type(options), plugin="stitchframe.testing")
    net = build_snnet(anchors, space="space_under_test", space_options=options, layer=layer, registries=regs)
    inputs = _to_device(inputs if inputs is not None else anchors[0].example_inputs, _device_of(net))
    with _eval_mode(net):
        for i, route in enumerate(net.routes):
            out = _first_tensor(net.forward_route(inputs, i), f"route {route}")
            if not torch.isfinite(out).all():
                _fail(f"{cls.__name__}: route {i} ({route}) outputs NaN or infinite values")


# ---------------------------------------------------------------------------
# plugins
# ---------------------------------------------------------------------------
def check_plugin(plugin: Any, name: str = "plugin_under_test") -> Registries:
    """Register a plugin on a fresh manager and check what it registers.

    Checks that the plugin registers (no misspelled hooks), no hook fails,
    it registers or resolves something, every registered object has an attrs
    ``Options`` class whose fields all carry ``metadata={"help": ...}``,
    stitching layers subclass :class:`~stitchframe.StitchLayer`, stitch spaces
    :class:`~stitchframe.StitchSpace`, and adapters and datasets are callables.

    Args:
        plugin: The plugin (module, class or instance with hook implementations).
        name: The name to register it under.

    Returns:
        The registries, with the built-ins and this plugin only.

    Raises:
        ConformanceError: The plugin breaks the contract.
    """
    pm = get_plugin_manager(load_entrypoints=False)
    if pm.is_registered(plugin):
        name = pm.get_name(plugin)
    else:
        try:
            pm.register_plugin(plugin, name=name)
        except PluginError as exc:
            raise ConformanceError(str(exc)) from exc
    regs = load_registries(pm)
    for problem in regs.problems:
        if problem.plugin == name:
            _fail(problem.message)
    kinds = {
        "anchor adapter": (regs.anchor_adapters, None),
        "stitch layer": (regs.stitch_layers, StitchLayer),
        "stitch space": (regs.stitch_spaces, StitchSpace),
        "dataset": (regs.datasets, None),
    }
    count = 0
    for kind, (registry, base) in kinds.items():
        for entry in registry:
            if entry.plugin != name:
                continue
            count += 1
            _check_entry(kind, entry, base)
    resolves = any(impl.plugin_name == name for impl in pm.hook.stitchframe_resolve_anchor.get_hookimpls())
    if count == 0 and not resolves:
        _fail(f"Plugin {name!r} registers nothing and resolves no anchors; implement a stitchframe_* hook")
    return regs


def _check_entry(kind: str, entry: Any, base: type | None) -> None:
    where = f"{kind} {entry.name!r} (plugin {entry.plugin!r})"
    if base is not None and not (isinstance(entry.obj, type) and issubclass(entry.obj, base)):
        _fail(f"{where} is {entry.obj!r}; it must be a subclass of stitchframe.{base.__name__}")
    if base is None and not callable(entry.obj):
        _fail(f"{where} is {entry.obj!r}; it must be callable")
    for field in attrs.fields(entry.options):
        if not field.metadata.get("help"):
            _fail(
                f"{where}: option {field.name!r} of {entry.options.__name__} has no help; "
                'declare it with attrs.field(..., metadata={"help": "..."}) so the docs can list it'
            )
