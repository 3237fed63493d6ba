"""Stitching layers and their least-squares initialisation.

A stitching layer maps the activation at a cut point of one anchor
(``src`` spec) to the activation another anchor expects (``dst`` spec).  The
built-ins are projections over the channel dimension, applied per position:

* ``linear`` - any pair of layouts that can be aligned position by position:
  tokens, sequences, channels-last maps, and across layouts (tokens <-> maps)
  with prefix tokens dropped, folded or synthesised and grids resized;
* ``conv1x1`` - channels-first feature maps (a 1x1 convolution), resizing when
  grids differ;
* ``lowrank`` - a least-squares base that stays frozen plus a trainable
  rank-``r`` update, merged into the base for inference.

Least squares (SN-Net's initialisation, ``W = pinv(X) Y`` with a bias) is
computed from accumulated normal equations ``XᵀX`` and ``XᵀY`` in float64,
so batches can be streamed and raw activations are never stored.

The built-in plugin ``stitchframe.stitch_layers`` registers the three types; its hook lives in
:mod:`stitchframe.builtins` and their options in :mod:`stitchframe.layer_options`, so registering
them imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ShapeMismatchError, StitchframeError
from .graph import ActivationSpec
from .layer_options import LowRankOptions, ProjectionOptions
from .registry import NoOptions

__all__ = [
    "StitchJoin",
    "StitchLayer",
    "LeastSquaresStitch",
    "NormalEquations",
    "ProjectionOptions",
    "ProjectionStitch",
    "LinearStitch",
    "Conv1x1Stitch",
    "LowRankOptions",
    "LowRankStitch",
    "solve_least_squares",
    "choose_ridge",
    "RIDGE_GRID",
]


class StitchJoin(NamedTuple):
    """One pair of cut points a stitching layer joins (see :meth:`StitchLayer.init_from_anchors`).

    Attributes:
        src: The anchor the activation comes from (a :class:`stitchframe.Anchor`).
        src_pos: Its cut position (``0``: stem output, ``k``: output of block ``k-1``).
        dst: The anchor the activation goes into.
        dst_pos: The cut position it enters at.
    """

    src: Any
    src_pos: int
    dst: Any
    dst_pos: int


class StitchLayer(nn.Module):
    """Base class of stitching layers.

    Subclasses set ``Options`` (an attrs class), implement
    :meth:`supports` and ``forward``, and, to be calibrated, the three
    ``fit_*`` methods.  The engine constructs them as ``cls(src, dst, options)``
    and then calls :meth:`init_from_anchors` once with the cut points the
    layer joins.

    Args:
        src: Spec of the activation coming in.
        dst: Spec of the activation to produce.
        options: An instance of ``Options`` (``None``: defaults).
    """

    Options: type = NoOptions

    def __init__(self, src: ActivationSpec, dst: ActivationSpec, options: Any = None) -> None:
        super().__init__()
        reason = type(self).supports(src, dst)
        if reason is not None:
            raise ShapeMismatchError(
                f"{type(self).__name__} cannot stitch {src.describe()} ({src.layout}) -> "
                f"{dst.describe()} ({dst.layout}): {reason}"
            )
        self.src = src
        self.dst = dst
        self.options = options if options is not None else self.Options()

    @classmethod
    def supports(cls, src: ActivationSpec, dst: ActivationSpec) -> str | None:
        """Return ``None`` if this type can map ``src`` to ``dst``, else a one-line reason."""
        return None

    def init_from_anchors(self, joins: Sequence[StitchJoin]) -> None:
        """Initialise from the anchors themselves, before any calibration (default: do nothing).

        :func:`stitchframe.build_snnet` calls this once per layer, after
        every route is known, with each pair of cut points the layer joins
        (several when a stitch space shares one layer between pairs).  A
        layer type that can set its weights without data, from what the
        anchors carry (transformation matrices learned while distilling them,
        say), overrides it; calibration runs afterwards and may refit.

        Args:
            joins: The :class:`StitchJoin` pairs, in a stable order.
        """

    # -- calibration protocol -------------------------------------------
    def fit_start(self) -> None:
        """Begin a calibration pass (reset accumulators)."""

    def fit_update(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Accumulate one batch of paired activations (``src``-shaped ``x``, ``dst``-shaped ``y``).

        ``mask`` (``[B, L]``, true where valid) excludes padded sequence positions.
        """

    def fit_end(self, ridge: float = 0.0) -> None:
        """Solve for the weights from everything accumulated."""

    def fit(self, x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0, mask: torch.Tensor | None = None):
        """Fit on one batch: ``fit_start``, ``fit_update``, ``fit_end``. Returns ``self``."""
        self.fit_start()
        self.fit_update(x, y, mask)
        self.fit_end(ridge)
        return self

    def merge(self) -> None:
        """Fold any training-time structure into plain weights (no-op by default)."""

    def extra_repr(self) -> str:
        return f"{self.src.describe()} {self.src.layout} -> {self.dst.describe()} {self.dst.layout}"


class NormalEquations:
    """Accumulates ``XᵀX`` and ``XᵀY`` (with a bias column) in float64.

    Args:
        d_in: Input width (without the bias column).
        d_out: Output width.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        self.xtx = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
        self.xty = torch.zeros(d_in + 1, d_out, dtype=torch.float64)
        self.rows = 0

    @staticmethod
    def augment(x: torch.Tensor) -> torch.Tensor:
        """Rows ``[n, d]`` -> ``[n, d+1]`` float64 with a trailing ones column."""
        x = x.detach().to(torch.float64)
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)

    def add(self, x: torch.Tensor, y: torch.Tensor, *, gram: torch.Tensor | None = None) -> None:
        """Add rows ``x [n, d_in]`` and ``y [n, d_out]``; ``gram`` may pass a precomputed ``XᵀX``."""
        xa = self.augment(x)
        self.xtx += (gram if gram is not None else xa.T @ xa).cpu()
        self.xty += (xa.T @ y.detach().to(torch.float64)).cpu()
        self.rows += x.shape[0]

    @staticmethod
    def total(parts: Sequence[NormalEquations]) -> NormalEquations:
        """The sum of several accumulators of the same shape (one is returned as is)."""
        if len(parts) == 1:
            return parts[0]
        out = NormalEquations(parts[0].xtx.shape[0] - 1, parts[0].xty.shape[1])
        for p in parts:
            out.xtx += p.xtx
            out.xty += p.xty
            out.rows += p.rows
        return out

    def error(self, w: torch.Tensor) -> float:
        """``|XW - Y|² - |Y|²`` of a solution ``W`` on the accumulated rows (``|Y|²`` is the same for every ``W``)."""
        w = w.to(torch.float64)
        return float((w * (self.xtx @ w)).sum() - 2 * (w * self.xty).sum())

    def solve(self, ridge: float = 0.0, *, intercept: bool = True) -> torch.Tensor:
        """Return ``W [d_in+1, d_out]`` (last row: bias) minimising ``|XW - Y|² + ridge·|W|²``.

        With ``intercept=False`` the bias is fixed at zero (its row is zero).
        """
        return solve_least_squares(self.xtx, self.xty, ridge, intercept=intercept)


def solve_least_squares(
    xtx: torch.Tensor, xty: torch.Tensor, ridge: float = 0.0, *, intercept: bool = True
) -> torch.Tensor:
    """Solve normal equations; singular systems get the minimum-norm solution.

    ``ridge`` is relative: ``ridge * mean(diag(XᵀX))`` is added to the
    diagonal of the weight rows (not the bias).  The last row/column of
    ``xtx`` belongs to the bias column; with ``intercept=False`` it is left
    out of the solve and the returned bias row is zero.
    """
    a = xtx.to(torch.float64).cpu().clone()
    b = xty.to(torch.float64).cpu()
    d = a.shape[0] - 1
    if ridge > 0:
        scale = torch.diagonal(a)[:d].mean().clamp_min(1e-12)
        a[:d, :d] += ridge * scale * torch.eye(d, dtype=torch.float64)
    if not intercept:
        a, b = a[:d, :d], b[:d]
    w = None
    if ridge > 0:  # positive definite: a Cholesky solve is much faster than the SVD
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            w = torch.cholesky_solve(b, chol)
    if w is None:
        w = torch.linalg.lstsq(a, b, driver="gelsd").solution
    return w if intercept else torch.cat([w, w.new_zeros(1, w.shape[1])], dim=0)


#: The relative ridges ``ridge: auto`` chooses from.
RIDGE_GRID: tuple[float, ...] = (0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def choose_ridge(folds: Sequence[NormalEquations], grid: Sequence[float] = RIDGE_GRID, *,
                 intercept: bool = True) -> float:
    """The ridge of ``grid`` with the smallest cross-validated squared error.

    Each fold is held out in turn: the solution on the other folds' normal
    equations is scored on the held-out fold's (``XᵀX``, ``XᵀY`` are all a
    squared error needs, up to a constant), and the errors are summed.
    With a single fold there is nothing to hold out: the smallest ridge of
    the grid is returned.
    """
    grid = sorted(float(r) for r in grid)
    if not grid or grid[0] < 0:
        raise StitchframeError(f"ridge grid must hold non-negative numbers, got {list(grid)!r}")
    folds = [f for f in folds if f.rows]
    if len(folds) < 2:
        return grid[0]
    total = NormalEquations.total(folds)
    errors = []
    for lam in grid:
        err = 0.0
        for f in folds:
            rest = NormalEquations(f.xtx.shape[0] - 1, f.xty.shape[1])
            rest.xtx, rest.xty = total.xtx - f.xtx, total.xty - f.xty
            err += f.error(rest.solve(lam, intercept=intercept))
        errors.append(err)
    return grid[min(range(len(grid)), key=errors.__getitem__)]


# ---------------------------------------------------------------------------
# Aligning two layouts position by position
# ---------------------------------------------------------------------------
def _bridge_reason(src: ActivationSpec, dst: ActivationSpec) -> str | None:
    if (src.layout == "sequence") != (dst.layout == "sequence"):
        return "a sequence (text) activation has no spatial grid to align with a spatial one"
    if src.layout == "sequence" and None not in (src.length, dst.length) and src.length != dst.length:
        return f"sequence lengths differ ({src.length} vs {dst.length})"
    return None


def _split(x: torch.Tensor, spec: ActivationSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Activation -> (positions ``[B, N, C]``, prefix ``[B, k, C]`` or ``None``)."""
    if spec.layout == "tokens":
        k = spec.prefix
        return x[:, k:], (x[:, :k] if k else None)
    if spec.layout == "map":
        return x.flatten(2).transpose(1, 2), None
    if spec.layout == "nhwc":
        return x.flatten(1, 2), None
    return x, None


def _join(f: torch.Tensor, p: torch.Tensor | None, spec: ActivationSpec) -> torch.Tensor:
    """Inverse of :func:`_split` for the destination spec."""
    if spec.layout == "tokens":
        return torch.cat([p, f], dim=1) if p is not None else f
    if spec.layout == "map":
        return f.transpose(1, 2).unflatten(2, spec.grid)
    if spec.layout == "nhwc":
        return f.unflatten(1, spec.grid)
    return f


def _resize_mode(options: ProjectionOptions, src: tuple[int, int], dst: tuple[int, int]) -> str:
    if options.resize != "auto":
        return options.resize
    return "area" if dst[0] <= src[0] and dst[1] <= src[1] else "bilinear"


def _resize_map(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "area":
        return F.adaptive_avg_pool2d(x, size)
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


class LeastSquaresStitch(StitchLayer):
    """A stitch whose calibration is linear least squares.

    Subclasses implement :meth:`ls_rows` (source activation -> design rows),
    :meth:`ls_targets` (destination activation -> target rows) and
    :meth:`ls_assign`.  The calibrator shares ``XᵀX`` between layers whose
    :meth:`ls_signature` and source cut point are equal.
    """

    def ls_rows(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Design rows per sub-problem (``{"main": [n, d_in]}``)."""
        raise NotImplementedError

    def ls_targets(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Target rows per sub-problem, matching :meth:`ls_rows`."""
        raise NotImplementedError

    def ls_assign(self, solutions: dict[str, torch.Tensor]) -> None:
        """Load solved ``[d_in+1, d_out]`` matrices (last row: bias)."""
        raise NotImplementedError

    def ls_signature(self) -> tuple:
        """Hashable description of :meth:`ls_rows` (equal -> same design rows)."""
        return (type(self).__name__, self.src, self.dst)

    def ls_intercept(self, key: str) -> bool:
        """Whether sub-problem ``key`` has a bias (``False``: solved through the origin)."""
        return True

    def fit_start(self) -> None:
        self._folds: dict[int, dict[str, NormalEquations]] = {}

    def fit_update(self, x, y, mask=None, *, rows=None, grams=None, fold: int = 0) -> None:
        """Accumulate one batch (see :meth:`StitchLayer.fit_update`).

        ``rows`` / ``grams`` pass design rows and ``XᵀX`` the calibrator
        already computed; ``fold`` is the cross-validation fold of these rows
        (used when :meth:`fit_end` chooses the ridge from a grid).
        """
        if not hasattr(self, "_folds"):
            self.fit_start()
        rows = rows if rows is not None else self.ls_rows(x, mask)
        targets = self.ls_targets(y, mask)
        folds = self._folds.setdefault(fold, {})
        for key, r in rows.items():
            t = targets[key]
            if r.shape[0] != t.shape[0]:
                raise ShapeMismatchError(
                    f"{type(self).__name__}: {r.shape[0]} source rows vs {t.shape[0]} target rows for '{key}'"
                )
            eq = folds.get(key)
            if eq is None:
                eq = folds[key] = NormalEquations(r.shape[1], t.shape[1])
            eq.add(r, t, gram=None if grams is None else grams.get(key))

    def fit_rows(self) -> int:
        """Rows accumulated since :meth:`fit_start`, over all sub-problems and folds."""
        return sum(eq.rows for f in getattr(self, "_folds", {}).values() for eq in f.values())

    def fit_end(self, ridge: float | Sequence[float] = 0.0) -> None:
        """Solve from everything accumulated.

        ``ridge`` is a relative ridge, or a grid of them: then each
        sub-problem takes the ridge with the smallest cross-validated error
        (every fold held out in turn, see :func:`choose_ridge`), recorded in
        ``self.fitted_ridge``, and is solved on all folds with it.
        """
        folds = getattr(self, "_folds", None)
        if not folds:
            raise StitchframeError(f"{type(self).__name__}.fit_end called before any fit_update")
        keys = sorted({k for f in folds.values() for k in f})
        solutions, chosen = {}, {}
        for key in keys:
            parts = [f[key] for _, f in sorted(folds.items()) if key in f]
            total = NormalEquations.total(parts)
            intercept = self.ls_intercept(key)
            lam = choose_ridge(parts, ridge, intercept=intercept) if not isinstance(ridge, (int, float)) else ridge
            chosen[key] = float(lam)
            solutions[key] = total.solve(lam, intercept=intercept)
        self.ls_assign(solutions)
        self.fitted_ridge = chosen
        del self._folds


class ProjectionStitch(LeastSquaresStitch):
    """Per-position channel projection ``y = W x + b`` with layout alignment.

    The source activation is split into its positions (patch tokens, map
    pixels, sequence positions) and its prefix tokens; the positions are
    resized to the destination grid and projected by ``W``; the destination
    is then laid out in its own layout.  Prefix tokens (cls, distillation):

    * same count on both sides: mapped by the same projection as positions;
    * the destination has none: dropped, or with ``prefix: fold`` their mean
      is added to every position before projecting;
    * the destination has a different, non-zero count (a ViT entered from a
      CNN, DeiT's two prefix tokens from ViT's one): synthesised by a second
      linear map from the mean of the source positions (before any resize)
      and the source's own prefix tokens, ``[mean(f), p_1, ..., p_ks]``.

    Least squares fits ``W`` (sub-problem ``main``: one row per position) and
    the synthesis map (sub-problem ``prefix``: one row per example).
    """

    Options = ProjectionOptions

    def __init__(self, src: ActivationSpec, dst: ActivationSpec, options: Any = None) -> None:
        super().__init__(src, dst, options)
        c_in, c_out = src.channels, dst.channels
        self.weight = nn.Parameter(torch.empty(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out)) if self.options.bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        k_s, k_d = src.prefix, dst.prefix
        self._shared_prefix = k_d > 0 and k_s == k_d
        self._synth_prefix = k_d > 0 and k_s != k_d
        self._fold = k_s > 0 and k_d == 0 and self.options.prefix == "fold"
        if self._synth_prefix:
            self.prefix_weight = nn.Parameter(torch.zeros(k_d * c_out, (1 + k_s) * c_in))
            self.prefix_bias = nn.Parameter(torch.zeros(k_d * c_out))
        self._resize = None
        if src.grid is not None and dst.grid is not None and src.grid != dst.grid:
            self._resize = _resize_mode(self.options, src.grid, dst.grid)
        same_layout = src.layout == dst.layout and (src.layout != "tokens" or src.prefix == dst.prefix)
        self._direct = same_layout and self._resize is None and src.layout in ("tokens", "sequence", "nhwc")

    @classmethod
    def supports(cls, src: ActivationSpec, dst: ActivationSpec) -> str | None:
        return _bridge_reason(src, dst)

    # -- the computation ------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        """The ``[C_out, C_in]`` matrix applied (subclasses add updates)."""
        return self.weight

    def _align(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Source activation -> positions ``[B, N_dst, C_in]``, source prefix, prefix-synthesis features."""
        f, p = _split(x, self.src)
        feats = None
        if self._synth_prefix:
            pooled = f.mean(dim=1)
            feats = pooled if p is None else torch.cat([pooled, p.flatten(1)], dim=1)
        if self._fold and p is not None:
            f = f + p.mean(dim=1, keepdim=True)
        if self._resize is not None:
            f = f.transpose(1, 2).unflatten(2, self.src.grid)
            f = _resize_map(f, self.dst.grid, self._resize).flatten(2).transpose(1, 2)
        return f, p, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        if self._direct:
            return F.linear(x, w, self.bias)
        f, p, feats = self._align(x)
        if self._shared_prefix:  # the destination is `tokens`: prefix first, then positions
            return F.linear(torch.cat([p, f], dim=1), w, self.bias)
        out_p = None
        if self._synth_prefix:
            out_p = F.linear(feats, self.prefix_weight, self.prefix_bias).unflatten(
                1, (self.dst.prefix, self.dst.channels)
            )
        return _join(F.linear(f, w, self.bias), out_p, self.dst)

    # -- least squares --------------------------------------------------
    def _mask_rows(self, rows: torch.Tensor, mask: torch.Tensor | None, spec: ActivationSpec) -> torch.Tensor:
        if mask is None or spec.layout != "sequence":
            return rows.reshape(-1, rows.shape[-1])
        return rows[mask.to(device=rows.device, dtype=torch.bool)]

    def ls_rows(self, x, mask=None):
        with torch.no_grad():
            f, p, feats = self._align(x)
            if self._shared_prefix:
                rows = {"main": torch.cat([p, f], dim=1).reshape(-1, f.shape[-1])}
            else:
                rows = {"main": self._mask_rows(f, mask, self.src)}
            if self._synth_prefix:
                rows["prefix"] = feats
        return rows

    def ls_targets(self, y, mask=None):
        with torch.no_grad():
            f, p = _split(y, self.dst)
            if self._shared_prefix:
                targets = {"main": torch.cat([p, f], dim=1).reshape(-1, f.shape[-1])}
            else:
                targets = {"main": self._mask_rows(f, mask, self.dst)}
            if self._synth_prefix:
                targets["prefix"] = p.reshape(p.shape[0], -1)
        return targets

    def ls_signature(self) -> tuple:
        return ("projection", self.src, self.dst.grid, self.dst.prefix, self._fold, self._resize)

    def ls_intercept(self, key: str) -> bool:
        return self.bias is not None or key != "main"

    def ls_assign(self, solutions: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            sol = solutions["main"]
            self.weight.copy_(sol[:-1].T.to(self.weight))
            if self.bias is not None:
                self.bias.copy_(sol[-1].to(self.bias))
            if self._synth_prefix and "prefix" in solutions:
                sp = solutions["prefix"]
                self.prefix_weight.copy_(sp[:-1].T.to(self.prefix_weight))
                self.prefix_bias.copy_(sp[-1].to(self.prefix_bias))


class LinearStitch(ProjectionStitch):
    """Linear projection over channels, for tokens, sequences and across layouts."""


class Conv1x1Stitch(ProjectionStitch):
    """1x1 convolution between channels-first feature maps, resizing when grids differ."""

    @classmethod
    def supports(cls, src: ActivationSpec, dst: ActivationSpec) -> str | None:
        if src.layout != "map" or dst.layout != "map":
            return f"conv1x1 joins 'map' layouts only (got {src.layout!r} -> {dst.layout!r}); use 'linear'"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._resize is not None:
            x = _resize_map(x, self.dst.grid, self._resize)
        return F.conv2d(x, self.effective_weight()[:, :, None, None], self.bias)


class LowRankStitch(ProjectionStitch):
    """Least-squares base (frozen) plus a trainable rank-r update (SN-Netv2).

    ``W = W0 + (alpha / r) · B A`` with ``W0`` from least squares, ``A`` small
    random and ``B`` zero, so training starts exactly at the least-squares
    solution.  :meth:`merge` folds the update into ``W0`` for inference.
    Works on every layout pair ``linear`` supports; maps use a 1x1 convolution.
    """

    Options = LowRankOptions

    def __init__(self, src: ActivationSpec, dst: ActivationSpec, options: Any = None) -> None:
        super().__init__(src, dst, options)
        r = min(self.options.rank, src.channels, dst.channels)
        self.weight.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(r, src.channels))
        self.lora_b = nn.Parameter(torch.zeros(dst.channels, r))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = (self.options.alpha if self.options.alpha is not None else self.options.rank) / r
        self._map = src.layout == "map" and dst.layout == "map"

    def effective_weight(self) -> torch.Tensor:
        return self.weight + self.scale * (self.lora_b @ self.lora_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._map:
            if self._resize is not None:
                x = _resize_map(x, self.dst.grid, self._resize)
            return F.conv2d(x, self.effective_weight()[:, :, None, None], self.bias)
        return super().forward(x)

    def ls_assign(self, solutions: dict[str, torch.Tensor]) -> None:
        super().ls_assign(solutions)
        with torch.no_grad():
            self.lora_b.zero_()

    def merge(self) -> None:
        """Fold ``scale · B A`` into the base weight and zero ``B``."""
        with torch.no_grad():
            self.weight.copy_(self.effective_weight())
            self.lora_b.zero_()
