"""``check_anchor``: an adapter's anchors against the contract."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..anchors import Anchor, device_of, to_device, count_flops
from ..errors import ShapeMismatchError, StitchframeError
from ..routes import Route, Segment
from ..snnet import SNNet
from ._common import ConformanceError, eval_mode, fail, first_tensor, max_diff, unique_params

__all__ = ["check_anchor"]


def check_anchor(
    anchor: Anchor,
    model: nn.Module | None = None,
    inputs: Any = None,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    flops_rtol: float = 1e-3,
    lift_near_zero: bool = True,
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

    Blocks that are nearly the identity at initialisation (a layer scale of
    ``1e-6``, as timm's ConvNeXt starts, or a residual branch whose last norm
    weight starts at zero) would let a block in the wrong place go unnoticed,
    since skipping or swapping it changes nothing.  So, by default, every
    parameter that is not a bias and whose values all lie within ``1e-4`` of
    zero is given seeded values between 0.1 and 0.5 while the checks run, and
    restored afterwards.

    Args:
        anchor: The anchor to check.
        model: The original model the adapter cut up (optional).
        inputs: Inputs to run (default: ``anchor.example_inputs``).
        atol: Absolute tolerance of output comparisons.
        rtol: Relative tolerance of output comparisons.
        flops_rtol: Relative tolerance between the graph's FLOPs and the model's.
        lift_near_zero: Lift near-zero parameters (see above) during the checks.

    Raises:
        ConformanceError: The anchor breaks the contract.
    """
    if not isinstance(anchor, Anchor):
        fail(f"check_anchor got {type(anchor).__name__}; an adapter must return a stitchframe.Anchor")
    if anchor.example_inputs is None:
        fail(f"Anchor {anchor.name!r} has no example_inputs; pass a batch-1 example to Anchor(example_inputs=...)")
    try:
        graph = anchor.graph
    except StitchframeError as exc:  # a part that fails on example_inputs, or an activation off its layout
        raise ConformanceError(str(exc)) from exc
    except Exception as exc:
        raise ConformanceError(
            f"Anchor {anchor.name!r}: tracing the block graph failed: {type(exc).__name__}: {exc}"
        ) from exc
    _check_graph_structure(anchor)
    device = device_of(anchor)
    inputs = to_device(inputs if inputs is not None else anchor.example_inputs, device)
    lifted = _lifted_near_zero(anchor, model) if lift_near_zero else contextlib.nullcontext()
    with eval_mode(anchor, model), lifted:
        acts = anchor.activations(inputs, list(graph.positions()))
        for pos, x in acts.items():
            _check_activation(anchor, pos, x)
        out = first_tensor(anchor(inputs), f"Anchor {anchor.name!r}")
        if not torch.isfinite(out).all():
            fail(f"Anchor {anchor.name!r}: the anchor route's output holds NaN or infinite values")
        _check_in_snnet(anchor, inputs, out)
        if model is not None:
            _check_against_model(anchor, model, inputs, out, acts, atol=atol, rtol=rtol)
            _check_model_costs(anchor, model, flops_rtol)


@contextlib.contextmanager
def _lifted_near_zero(*modules: nn.Module | None, tiny: float = 1e-4) -> Iterator[int]:
    """Non-bias parameters within ``tiny`` of zero get seeded values in [0.1, 0.5]; restored on exit."""
    generator = torch.Generator().manual_seed(0)
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    names = {id(p): n for m in modules if m is not None for n, p in m.named_parameters()}
    try:
        with torch.no_grad():
            for pid, p in unique_params(*modules).items():
                if names.get(pid, "").endswith("bias") or not p.is_floating_point() or p.numel() == 0:
                    continue
                if float(p.detach().abs().max()) < tiny:
                    saved.append((p, p.detach().clone()))
                    p.copy_(torch.empty(p.shape, dtype=torch.float32).uniform_(0.1, 0.5, generator=generator))
        yield len(saved)
    finally:
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)


def _check_graph_structure(anchor: Anchor) -> None:
    graph = anchor.graph
    name = anchor.name
    if graph.depth != anchor.depth or graph.nx.number_of_nodes() != anchor.depth + 2:
        fail(f"Anchor {name!r}: the block graph has {graph.depth} blocks but the anchor has {anchor.depth}")
    stages = graph.stages()
    for pos in range(1, len(stages)):
        if stages[pos] < stages[pos - 1]:
            fail(
                f"Anchor {name!r}: stage goes down from {stages[pos - 1]} to {stages[pos]} at "
                f"{graph.name_at(pos)}; stages must never decrease (pass Anchor(stages=...) in block order)"
            )
    for info in graph.blocks:
        if info.flops <= 0:
            fail(
                f"Anchor {name!r}: {info.name} (module {info.path!r}) has {info.flops} FLOPs; torch's counter "
                "missed its computation (a fused or custom op?) or the block does nothing"
            )
    if graph.flops <= 0:
        fail(f"Anchor {name!r}: the whole anchor counts {graph.flops} FLOPs")
    own = sum(p.numel() for p in unique_params(anchor).values())
    if graph.params != own:
        fail(
            f"Anchor {name!r}: stem, blocks and head hold {graph.params} parameters but the anchor holds {own}; "
            "a module is counted twice (shared between parts?) or held outside stem/blocks/norm/head/prepare"
        )


def _check_activation(anchor: Anchor, pos: int, x: Any) -> None:
    graph = anchor.graph
    where = graph.name_at(pos)
    if not isinstance(x, torch.Tensor):
        fail(f"Anchor {anchor.name!r}: {where} returns {type(x).__name__}; blocks must return one tensor")
    try:
        graph.spec_at(pos).check(x, where=f"{where} (cut position {pos})")
    except ShapeMismatchError as exc:
        raise ConformanceError(f"Anchor {anchor.name!r}: {exc} The graph was traced on example_inputs.") from exc
    if not torch.isfinite(x).all():
        fail(f"Anchor {anchor.name!r}: {where} (cut position {pos}) outputs NaN or infinite values")


def _check_in_snnet(anchor: Anchor, inputs: Any, out: torch.Tensor) -> None:
    route = Route([Segment(anchor.name, 0, anchor.depth)])
    net = SNNet([anchor], [route], {}).eval()
    for what, result in (("SNNet's anchor route", net(inputs)), ("the exported anchor route", net.export()(inputs))):
        got = first_tensor(result, what)
        if got.shape != out.shape or not torch.equal(got, out):
            fail(f"Anchor {anchor.name!r}: {what} differs from anchor(inputs); stem/blocks/head must be stateless")


def _check_against_model(anchor, model, inputs, out, acts, *, atol: float, rtol: float) -> None:
    name = anchor.name
    model_params = unique_params(model)
    for pname, p in anchor.named_parameters():
        if id(p) not in model_params:
            fail(
                f"Anchor {name!r}: parameter {pname!r} is not one of the model's; build the anchor from the "
                "model's own modules (do not copy or re-create them)"
            )
    captured = _run_with_block_hooks(anchor, model, inputs)
    expected = first_tensor(captured.pop("__output__"), "The model")
    graph = anchor.graph
    for i, got in captured.items():
        mine = acts[i + 1]
        comparable = isinstance(got, torch.Tensor) and got.shape == mine.shape
        if comparable and not torch.allclose(mine, got, atol=atol, rtol=rtol):
            fail(
                f"Anchor {name!r}: {graph.blocks[i].name} (module {graph.blocks[i].path!r}) outputs differently "
                f"when run by the anchor than inside the model (max |diff| {max_diff(mine, got):.3g}); "
                "the adapter runs it with other inputs, in another order, or without an argument (a mask?)"
            )
    if expected.shape != out.shape:
        fail(f"Anchor {name!r}: the anchor route outputs {tuple(out.shape)}, the model {tuple(expected.shape)}")
    if not torch.allclose(out, expected, atol=atol, rtol=rtol):
        fail(
            f"Anchor {name!r}: the anchor route differs from the model (max |diff| {max_diff(out, expected):.3g}); "
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
    example = to_device(anchor.example_inputs, device_of(anchor))
    _, model_flops = count_flops(model, example)
    if abs(model_flops - graph.flops) > flops_rtol * max(model_flops, 1):
        fail(
            f"Anchor {anchor.name!r}: stem, blocks and head count {graph.flops} FLOPs but the model counts "
            f"{model_flops} on example_inputs; a part of the model's forward is missing or counted twice"
        )
    model_params = sum(p.numel() for p in unique_params(model).values())
    if graph.params != model_params:
        held = unique_params(anchor)
        missing = [name for name, p in model.named_parameters() if id(p) not in held]
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        fail(
            f"Anchor {anchor.name!r}: stem, blocks and head hold {graph.params} parameters but the model holds "
            f"{model_params}; a module of the model is missing from the anchor"
            + (f" (model parameters not in the anchor: {listed})" if missing else "")
        )
