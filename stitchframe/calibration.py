"""One-pass least-squares calibration of every stitching layer.

For each batch every anchor runs once, as far as its deepest needed cut
point, and each stitching layer accumulates its normal equations from the
paired activations; ``XᵀX`` is computed once per source cut point and design
transform and shared by all layers that read it.  Memory is one batch of
cut-point activations plus ``O(C²)`` per layer, whatever the number of
batches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .anchors import Anchor, _to_device
from .errors import StitchframeError
from .snnet import SNNet
from .stitch_layers import LeastSquaresStitch, NormalEquations

__all__ = ["calibrate", "calibrate_heads", "classifier_of", "stitch_pairs", "batch_inputs"]


def batch_inputs(batch: Any) -> Any:
    """The model inputs of a batch: ``(inputs, target)`` pairs give ``inputs``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        return batch[0]
    return batch


def stitch_pairs(snnet: SNNet) -> dict[str, set[tuple[str, int, str, int]]]:
    """For every stitching layer key, the cut-point pairs it joins across all routes."""
    pairs: dict[str, set[tuple[str, int, str, int]]] = defaultdict(set)
    for route in snnet.routes:
        for src, p, dst, q, link in route.stitch_points():
            pairs[snnet.link_key(src, p, dst, q, link)].add((src, p, dst, q))
    return dict(pairs)


def _mask_of(inputs: Any) -> torch.Tensor | None:
    if isinstance(inputs, Mapping) and "attention_mask" in inputs:
        return inputs["attention_mask"]
    return None


@torch.no_grad()
def calibrate(
    snnet: SNNet,
    batches: Iterable[Any],
    *,
    ridge: float = 0.0,
    keys: Iterable[str] | None = None,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Fit every stitching layer by least squares in one pass over ``batches``.

    Args:
        snnet: The SN-Net (run in eval mode; every module's mode is restored afterwards).
        batches: Model inputs, or ``(inputs, target)`` pairs.
        ridge: Relative ridge regularisation (see :func:`~stitchframe.solve_least_squares`).
        keys: Only these stitching layers (default: all).
        device: Where to run (default: where the SN-Net's parameters are).
        on_batch: Called with the batch index after each batch (progress).

    Returns:
        Number of rows each layer was fitted on, by key.
    """
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
    layers = {k: snnet.stitches[k] for k in pairs}
    for layer in layers.values():
        layer.fit_start()
    try:
        for b, batch in enumerate(batches):
            inputs = _to_device(batch_inputs(batch), device)
            mask = _mask_of(inputs)
            acts = {name: snnet.anchors[name].activations(inputs, sorted(pos)) for name, pos in needed.items()}
            shared: dict[tuple, tuple[dict, dict]] = {}
            for key, layer in layers.items():
                for src, p, dst, q in sorted(pairs[key]):
                    x, y = acts[src][p].float(), acts[dst][q].float()
                    if isinstance(layer, LeastSquaresStitch):
                        sig = (src, p, layer.ls_signature(), mask is not None)
                        if sig not in shared:
                            rows = layer.ls_rows(x, mask)
                            grams = {}
                            for k, r in rows.items():
                                aug = NormalEquations.augment(r)
                                grams[k] = aug.T @ aug
                            shared[sig] = (rows, grams)
                        rows, grams = shared[sig]
                        layer.fit_update(x, y, mask, rows=rows, grams=grams)
                    else:
                        layer.fit_update(x, y, mask)
            del acts, shared
            if on_batch is not None:
                on_batch(b)
        counts = {k: sum(eq.rows for eq in getattr(layer, "_normal", {}).values()) for k, layer in layers.items()}
        for layer in layers.values():
            layer.fit_end(ridge)
    finally:
        for m, mode in modes:
            m.training = mode
    return counts


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
            inputs = _to_device(inputs, device)
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
