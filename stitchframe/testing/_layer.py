"""``check_stitch_layer``: a stitching-layer type against the contract."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ShapeMismatchError
from ..graph import ActivationSpec
from ..io import load_module_state, save_module
from ..stitch_layers import LeastSquaresStitch, StitchLayer
from ._common import ConformanceError, eval_mode, fail, rel_err

__all__ = ["check_stitch_layer"]


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
        fail(f"check_stitch_layer got {cls!r}; a stitching layer must subclass stitchframe.StitchLayer")
    pair = f"{cls.__name__} {src.describe()} {src.layout} -> {dst.describe()} {dst.layout}"
    reason = cls.supports(src, dst)
    if reason is not None:
        if not isinstance(reason, str):
            fail(f"{cls.__name__}.supports returned {reason!r}; return None or a one-line reason (str)")
        fail(f"{pair}: supports() refuses the pair: {reason}")
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
        fail(f"{pair}: forward returned {type(y).__name__}, not a tensor")
    try:
        layer.dst.check(y, where=f"the output of {type(layer).__name__}")
    except ShapeMismatchError as exc:
        raise ConformanceError(f"{pair}: {exc}") from exc
    if not torch.isfinite(y).all():
        fail(f"{pair}: the output holds NaN or infinite values")
    with eval_mode(layer):
        whole, first = layer(x), layer(x[:1])
    if not torch.allclose(whole[:1], first, atol=1e-5, rtol=1e-4):
        fail(f"{pair}: in eval mode a sample's output depends on the rest of the batch; work per sample")


def _check_layer_gradients(layer: StitchLayer, x: torch.Tensor, pair: str) -> None:
    trainable = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    if not trainable:
        fail(f"{pair}: the layer has no trainable parameters; training could not adapt it")
    layer.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    out = layer(xg)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    (out * weights).sum().backward()
    missing = [n for n, p in trainable if p.grad is None]
    if missing:
        fail(f"{pair}: trainable parameter(s) {', '.join(missing)} get no gradient; use them in forward or freeze")
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    if bad:
        fail(f"{pair}: the gradient of {', '.join(bad)} holds NaN or infinite values")
    if all(float(p.grad.abs().max()) == 0.0 for _, p in trainable):
        fail(f"{pair}: every parameter gradient is zero; the output does not depend on the weights")
    if xg.grad is None or float(xg.grad.abs().max()) == 0.0:
        fail(f"{pair}: no gradient reaches the input, so the front anchor cannot train through the stitch")
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
    with eval_mode(teacher):
        y_fit, y_test = teacher(x_fit), teacher(x_test)
    torch.manual_seed(seed + 3)
    student = cls(src, dst, options)
    with torch.no_grad():
        student.fit(x_fit, y_fit)
    bad = [name for name, p in student.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        fail(f"{pair}: after fit, parameter(s) {', '.join(bad)} hold NaN or infinite values")
    x_eval, y_eval = (x_test, y_test) if determined else (x_fit, y_fit)
    with eval_mode(student):
        err = rel_err(student(x_eval), y_eval)
    if not err <= rtol:
        fail(
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
            fail(f"{pair}: the torch.export program computes something else than the layer")
    with tempfile.TemporaryDirectory() as tmp:
        path = save_module(layer, Path(tmp) / "layer.safetensors", kind="stitch")
        clone = cls(layer.src, layer.dst, layer.options)
        load_module_state(clone, path)
    clone.eval()
    with torch.no_grad():
        if not torch.equal(clone(x), ref):
            fail(f"{pair}: a copy loaded from safetensors computes something else; keep all state in the state_dict")
        trained = copy.deepcopy(layer)  # as if trained: every trainable weight moved
        gen = torch.Generator().manual_seed(4)
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p))
        before = trained(x)
        trained.merge()
        err = rel_err(trained(x), before)
    if not err <= rtol:
        fail(f"{pair}: merge() changes the output (relative error {err:.3g}); it must fold, not alter, the map")
