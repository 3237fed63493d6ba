"""One-pass least-squares calibration of every stitching layer.

For each batch every anchor runs once, as far as its deepest needed cut
point, and each stitching layer accumulates its normal equations from the
paired activations; ``XᵀX`` is computed once per source cut point and design
transform and shared by all layers that read it.  Memory is one batch of
cut-point activations plus ``O(C²)`` per layer (and per fold, and per cut
pair with ``share_fit="mean"``), whatever the number of batches.

Options beyond the plain solve: ``share_fit`` (how a layer shared by several
cut pairs is fitted), ``ridge="auto"`` (ridge chosen per layer by
cross-validation over folds of images) and ``augment`` (random resized
crops and flips of every image batch).
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .anchors import Anchor, to_device
from .errors import StitchframeError
from .snnet import SNNet
from .stitch_layers import RIDGE_GRID, LeastSquaresStitch, NormalEquations, StitchLayer

__all__ = ["calibrate", "calibrate_heads", "classifier_of", "stitch_pairs", "batch_inputs", "augment_images",
           "SHARE_FITS", "AUGMENT_SCALE"]

#: How a stitching layer shared by several cut pairs is fitted.
SHARE_FITS = ("pooled", "mean")

#: Area fraction range of the random resized crops of ``augment``.
AUGMENT_SCALE = (0.35, 1.0)

Pair = tuple[str, int, str, int]


def batch_inputs(batch: Any) -> Any:
    """The model inputs of a batch: ``(inputs, target)`` pairs give ``inputs``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        return batch[0]
    return batch


def stitch_pairs(snnet: SNNet) -> dict[str, set[Pair]]:
    """For every stitching layer key, the cut-point pairs it joins across all routes."""
    pairs: dict[str, set[Pair]] = defaultdict(set)
    for route in snnet.routes:
        for src, p, dst, q, link in route.stitch_points():
            pairs[snnet.link_key(src, p, dst, q, link)].add((src, p, dst, q))
    return dict(pairs)


def _mask_of(inputs: Any) -> torch.Tensor | None:
    if isinstance(inputs, Mapping) and "attention_mask" in inputs:
        return inputs["attention_mask"]
    return None


def augment_images(x: torch.Tensor, generator: torch.Generator, *,
                   scale: tuple[float, float] = AUGMENT_SCALE) -> torch.Tensor:
    """A random resized crop (area fraction in ``scale``, aspect 3/4..4/3) and a random flip of every image.

    Each image of ``x [B, C, H, W]`` gets its own crop, resampled bilinearly
    back to ``H x W``; the random numbers come from ``generator`` (CPU).
    """
    if not _is_images(x):
        what = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise StitchframeError(f"calibration.augment: needs image batches [B, C, H, W]; got {what}. "
                               "Set calibration.augment: 0 for these inputs")
    n = x.shape[0]
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    tx, ty = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, tx, h, ty
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _is_images(inputs: Any) -> bool:
    return isinstance(inputs, torch.Tensor) and inputs.dim() == 4 and inputs.is_floating_point()


def _views(inputs: Any, augment: int, generator: torch.Generator) -> Iterator[Any]:
    """The batch, then ``augment`` augmented views of it (image batches only; other inputs: the batch alone)."""
    yield inputs
    if _is_images(inputs):
        for _ in range(augment):
            yield augment_images(inputs, generator)


def _ridge_arg(ridge: Any) -> float | tuple[float, ...]:
    """``ridge`` as a number, or as the grid to choose from (``"auto"``: :data:`RIDGE_GRID`)."""
    if isinstance(ridge, str):
        if ridge != "auto":
            raise StitchframeError(f"calibration.ridge: {ridge!r} is not a number or 'auto'; "
                                   "use a relative ridge >= 0 (e.g. 1e-3) or auto")
        return RIDGE_GRID
    if isinstance(ridge, (int, float)) and not isinstance(ridge, bool):
        if not math.isfinite(ridge) or ridge < 0:
            raise StitchframeError(f"calibration.ridge: {ridge!r} must be a finite number >= 0, or auto")
        return float(ridge)
    grid = tuple(float(r) for r in ridge)
    if not grid or any(not math.isfinite(r) or r < 0 for r in grid):
        raise StitchframeError(f"calibration.ridge: grid {list(grid)!r} must hold finite numbers >= 0")
    return grid


def _fitters(snnet: SNNet, pairs: dict[str, set[Pair]], share_fit: str) -> dict[str, list[tuple[StitchLayer, list[Pair]]]]:
    """What accumulates each layer's equations: the layer itself, or (``mean``) one copy per cut pair."""
    out = {}
    for key, pts in pairs.items():
        layer, pts = snnet.stitches[key], sorted(pts)
        if share_fit == "mean" and len(pts) > 1:
            out[key] = [(copy.deepcopy(layer), [pt]) for pt in pts]
        else:
            out[key] = [(layer, pts)]
    return out


def _mean_into(layer: StitchLayer, copies: Sequence[StitchLayer]) -> None:
    """Load the mean of the copies' floating-point state (their per-pair solutions) into ``layer``."""
    states = [c.state_dict() for c in copies]
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[0].items()}
    layer.load_state_dict(mean)
    ridges = [getattr(c, "fitted_ridge", None) for c in copies]
    if all(r is not None for r in ridges):
        layer.fitted_ridge = {k: [r[k] for r in ridges] for k in ridges[0]}


@torch.no_grad()
def calibrate(
    snnet: SNNet,
    batches: Iterable[Any],
    *,
    ridge: float | str | Sequence[float] = 0.0,
    share_fit: str = "pooled",
    folds: int = 4,
    augment: int = 0,
    seed: int = 0,
    keys: Iterable[str] | None = None,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Fit every stitching layer by least squares in one pass over ``batches``.

    Args:
        snnet: The SN-Net (run in eval mode; every module's mode is restored afterwards).
        batches: Model inputs, or ``(inputs, target)`` pairs.
        ridge: Relative ridge regularisation (see :func:`~stitchframe.solve_least_squares`); ``"auto"``
            (or a sequence of ridges) chooses, per layer and sub-problem, the ridge of the grid
            (:data:`~stitchframe.stitch_layers.RIDGE_GRID`) with the smallest cross-validated error,
            image ``i`` of the stream (with its augmented views) belonging to fold ``i % folds``.
        share_fit: A layer shared by several cut pairs (``snnet``'s windows): ``pooled`` solves one
            least squares over the rows of all its pairs; ``mean`` solves one per pair and averages
            the solutions (weights and bias), as the SN-Net reference code does.
        folds: Cross-validation folds of ``ridge="auto"`` (ignored for a fixed ridge).
        augment: Extra views of every image batch (``[B, C, H, W]``), each a random resized crop and
            flip of every image (:func:`augment_images`); ``0``: the batches as given. Other inputs
            (text) get no extra views.
        seed: Seed of the augmentation.
        keys: Only these stitching layers (default: all).
        device: Where to run (default: where the SN-Net's parameters are).
        on_batch: Called with the batch index after each batch (progress).

    Returns:
        Number of rows each layer was fitted on, by key (views included).
    """
    grid = _ridge_arg(ridge)
    if share_fit not in SHARE_FITS:
        raise StitchframeError(f"calibration.share_fit: {share_fit!r} is not one of {', '.join(SHARE_FITS)}")
    if not isinstance(folds, int) or folds < 2:
        raise StitchframeError(f"calibration: folds must be an integer >= 2, got {folds!r}")
    if not isinstance(augment, int) or augment < 0:
        raise StitchframeError(f"calibration.augment: {augment!r} must be an integer >= 0")
    pairs = stitch_pairs(snnet)
    if keys is not None:
        wanted = set(keys)
        pairs = {k: v for k, v in pairs.items() if k in wanted}
    if not pairs:
        return {}
    needed: dict[str, set[int]] = defaultdict(set)
    for pts in pairs.values():
        for src, p, dst, q in pts:
            needed[src].add(p)
            needed[dst].add(q)
    if device is None:
        param = next(snnet.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    modes = [(m, m.training) for m in snnet.modules()]  # restored one by one afterwards
    snnet.eval()
    fitters = _fitters(snnet, pairs, share_fit)
    for items in fitters.values():
        for fitter, _ in items:
            fitter.fit_start()
    gen = torch.Generator().manual_seed(seed)
    seen = 0  # images so far: image i (and its augmented views) belongs to fold i % folds
    try:
        for b, batch in enumerate(batches):
            inputs = to_device(batch_inputs(batch), device)
            n = _batch_size(inputs)
            for view in _views(inputs, augment, gen):
                for fold, part in _fold_parts(view, n, seen, folds if isinstance(grid, tuple) else 1):
                    _accumulate(snnet, part, needed, fitters, fold)
            seen += n
            if on_batch is not None:
                on_batch(b)
        counts = {k: sum(_rows(f) for f, _ in items) for k, items in fitters.items()}
        for key, items in fitters.items():
            for fitter, _ in items:
                if isinstance(fitter, LeastSquaresStitch):
                    fitter.fit_end(grid)
                else:  # plugin layers take a number: the smallest ridge of a grid
                    fitter.fit_end(min(grid) if isinstance(grid, tuple) else grid)
            if len(items) > 1:
                _mean_into(snnet.stitches[key], [f for f, _ in items])
    finally:
        for m, mode in modes:
            m.training = mode
    return counts


def _batch_size(inputs: Any) -> int:
    """Examples in a batch of model inputs (a tensor, or a mapping of tensors with the batch first)."""
    first = inputs if isinstance(inputs, torch.Tensor) else next(
        (v for v in inputs.values() if isinstance(v, torch.Tensor)), None) if isinstance(inputs, Mapping) else None
    if first is None or first.dim() == 0:
        raise StitchframeError(f"calibration: cannot tell the batch size of inputs of type {type(inputs).__name__}; "
                               "pass a tensor or a mapping of tensors with the batch dimension first")
    return int(first.shape[0])


def _fold_parts(inputs: Any, n: int, offset: int, folds: int) -> Iterator[tuple[int, Any]]:
    """``(fold, part)`` of a batch whose images are ``offset .. offset + n - 1`` overall (image i: fold i % folds).

    Folds go by image, not by batch, so cross-validation has every fold from
    the first batch on (and the same memory for 100 images as for 10,000).
    """
    if folds == 1:
        yield 0, inputs
        return
    fold_of = torch.arange(offset, offset + n) % folds  # CPU indices select rows on any device
    for f in range(folds):
        idx = (fold_of == f).nonzero().flatten()
        if len(idx):
            yield f, _take(inputs, idx, n)


def _take(inputs: Any, idx: torch.Tensor, n: int) -> Any:
    """The examples ``idx`` of a batch (tensors with ``n`` rows are indexed; anything else is kept)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[idx] if inputs.dim() and inputs.shape[0] == n else inputs
    if isinstance(inputs, Mapping):
        return type(inputs)({k: _take(v, idx, n) for k, v in inputs.items()})
    return inputs


def _rows(fitter: StitchLayer) -> int:
    return fitter.fit_rows() if isinstance(fitter, LeastSquaresStitch) else 0


def _accumulate(snnet: SNNet, inputs: Any, needed: dict[str, set[int]],
                fitters: dict[str, list[tuple[StitchLayer, list[Pair]]]], fold: int) -> None:
    """Run the anchors once on ``inputs`` and add the paired activations to every fitter's equations."""
    mask = _mask_of(inputs)
    acts = {name: snnet.anchors[name].activations(inputs, sorted(pos)) for name, pos in needed.items()}
    shared: dict[tuple, tuple[dict, dict]] = {}
    for items in fitters.values():
        for fitter, pts in items:
            for src, p, dst, q in pts:
                x, y = acts[src][p].float(), acts[dst][q].float()
                if not isinstance(fitter, LeastSquaresStitch):
                    fitter.fit_update(x, y, mask)
                    continue
                sig = (src, p, fitter.ls_signature(), mask is not None)
                if sig not in shared:
                    rows = fitter.ls_rows(x, mask)
                    grams = {}
                    for k, r in rows.items():
                        aug = NormalEquations.augment(r)
                        grams[k] = aug.T @ aug
                    shared[sig] = (rows, grams)
                rows, grams = shared[sig]
                fitter.fit_update(x, y, mask, rows=rows, grams=grams, fold=fold)


def classifier_of(anchor: Anchor, num_classes: int) -> torch.nn.Linear:
    """The classifier of an anchor: the last :class:`torch.nn.Linear` in its head with ``num_classes`` outputs.

    Raises:
        StitchframeError: The head has no such layer.
    """
    found = [m for m in anchor.head.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_classes]
    if not found:
        raise StitchframeError(
            f"calibration.heads: the head of anchor {anchor.name!r} has no Linear layer with {num_classes} outputs "
            "to fit; set calibration.heads: false"
        )
    return found[-1]


@torch.no_grad()
def calibrate_heads(
    snnet: SNNet,
    batches: Iterable[Any],
    *,
    num_classes: int,
    ridge: float = 0.1,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Fit every anchor's classifier by ridge regression on one-hot labels, in one pass.

    Each anchor runs its own route in eval mode; the inputs of its classifier
    (:func:`classifier_of`) and the one-hot targets accumulate normal
    equations, solved at the end (weights and bias).  This is a linear probe
    of the pretrained features: a good start for classifiers created for a
    new task.

    Args:
        snnet: The SN-Net (run in eval mode; every module's mode is restored afterwards).
        batches: ``(inputs, target)`` pairs with integer class targets.
        num_classes: Number of classes.
        ridge: Relative ridge regularisation (see :func:`~stitchframe.solve_least_squares`).
        device: Where to run (default: where the SN-Net's parameters are).
        on_batch: Called with the batch index after each batch (progress).

    Returns:
        Number of examples each anchor's classifier was fitted on, by anchor name.
    """
    heads = {name: classifier_of(a, num_classes) for name, a in snnet.anchors.items()}
    eqs = {name: NormalEquations(fc.in_features, num_classes) for name, fc in heads.items()}
    if device is None:
        param = next(snnet.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    seen: dict[str, torch.Tensor] = {}
    hooks = [fc.register_forward_hook(lambda _m, args, _out, n=name: seen.__setitem__(n, args[0]))
             for name, fc in heads.items()]
    modes = [(m, m.training) for m in snnet.modules()]  # restored one by one afterwards
    snnet.eval()
    try:
        for b, (inputs, target) in enumerate(batches):
            inputs = to_device(inputs, device)
            onehot = torch.nn.functional.one_hot(torch.as_tensor(target).long(), num_classes).to(torch.float64)
            for name, anchor in snnet.anchors.items():
                anchor(inputs)
                x = seen.pop(name)
                if x.dim() != 2:
                    raise StitchframeError(
                        f"calibration.heads: the classifier of anchor {name!r} takes inputs of shape "
                        f"{tuple(x.shape)}; only [batch, features] classifiers can be fitted"
                    )
                eqs[name].add(x.float(), onehot.to(x.device))
            if on_batch is not None:
                on_batch(b)
        for name, fc in heads.items():
            w = eqs[name].solve(ridge).to(fc.weight.dtype)
            fc.weight.copy_(w[:-1].T.to(fc.weight.device))
            if fc.bias is not None:
                fc.bias.copy_(w[-1].to(fc.bias.device))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return {name: eq.rows for name, eq in eqs.items()}
