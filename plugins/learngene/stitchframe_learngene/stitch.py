"""The ``learngene`` stitching layer: initialised from the pool's learned transformations.

A ``linear`` stitch whose :meth:`~stitchframe.StitchLayer.init_from_anchors`
composes the transformations its two anchors learned while being distilled
(see :mod:`stitchframe_learngene.transforms`); a layer shared by several
pairs of cut points gets the mean of their compositions.  Calibration keeps
this initialisation unless ``calibrate: true``.  Where an anchor carries no
transformations (it is not from a ``learngene:`` source, or from another
pool), or the destination needs prefix tokens synthesised, the layer is an
ordinary ``linear`` stitch and calibration fits it by least squares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stitchframe import ActivationSpec, LinearStitch, StitchJoin

from .options import LearngeneStitchOptions
from .transforms import PoolTransforms, compose

__all__ = ["LearngeneStitch"]


class LearngeneStitch(LinearStitch):
    """Linear stitch initialised by composing student -> teacher -> student transformations.

    Attributes:
        from_transforms: True when :meth:`init_from_anchors` set the weights.
    """

    Options = LearngeneStitchOptions

    def __init__(self, src: ActivationSpec, dst: ActivationSpec, options: LearngeneStitchOptions | None = None) -> None:
        super().__init__(src, dst, options)
        self.from_transforms = False

    def init_from_anchors(self, joins: Sequence[StitchJoin]) -> None:
        """Set ``W, b`` to the mean composed transformation over ``joins`` (when every join has one).

        With ``bias: false`` the composed bias is dropped.
        """
        if not joins or self.dst.prefix not in (0, self.src.prefix):  # prefix tokens to synthesise: no transform
            return
        maps = []
        for src, p, dst, q in joins:
            a, b = getattr(src, "learngene", None), getattr(dst, "learngene", None)
            if not isinstance(a, PoolTransforms) or not isinstance(b, PoolTransforms):
                return
            m = compose(a, p, b, q, self.options.via)
            if m is None or tuple(m[0].shape) != tuple(self.weight.shape):
                return
            maps.append(m)
        with torch.no_grad():
            self.weight.copy_(torch.stack([w for w, _ in maps]).mean(0).to(self.weight))
            if self.bias is not None:
                self.bias.copy_(torch.stack([b for _, b in maps]).mean(0).to(self.bias))
        self.from_transforms = True

    def _keep(self) -> bool:
        return self.from_transforms and not self.options.calibrate

    def fit_start(self) -> None:
        if not self._keep():
            super().fit_start()

    def fit_update(self, x, y, mask=None, **kwargs) -> None:
        if not self._keep():
            super().fit_update(x, y, mask, **kwargs)

    def fit_end(self, ridge: float = 0.0) -> None:
        if not self._keep():
            super().fit_end(ridge)
