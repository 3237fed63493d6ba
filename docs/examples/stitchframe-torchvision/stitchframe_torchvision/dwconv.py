"""A depthwise-convolution stitching layer (the stitch layer of tutorial 2)."""

from __future__ import annotations

import attrs
import torch
from torch import nn

import stitchframe

from .options import DWConvOptions


# --8<-- [start:class]
class DWConvStitch(stitchframe.LeastSquaresStitch):
    """``y = pointwise(x + depthwise(x))`` between feature maps on the same grid.

    The depthwise convolution starts at zero, so before training the stitch is
    the 1x1 convolution ``pointwise``, which calibration fits by least squares.
    Training then lets the depthwise kernel mix neighbouring positions.
    """

    Options = DWConvOptions

    def __init__(self, src, dst, options=None):
        super().__init__(src, dst, options)
        c_in, k = src.channels, self.options.kernel_size
        self.depthwise = nn.Conv2d(c_in, c_in, k, padding=k // 2, groups=c_in, bias=False)
        nn.init.zeros_(self.depthwise.weight)
        self.pointwise = nn.Conv2d(c_in, dst.channels, 1)

    @classmethod
    def supports(cls, src, dst):
        if src.layout != "map" or dst.layout != "map":
            return f"dwconv joins 'map' layouts only (got {src.layout!r} -> {dst.layout!r}); use 'linear'"
        if src.grid != dst.grid:
            return f"dwconv needs equal grids (got {src.grid} -> {dst.grid}); use 'conv1x1', which resizes"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(x + self.depthwise(x))
# --8<-- [end:class]

    # --8<-- [start:least_squares]
    @staticmethod
    def _rows(t: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> one row per position, ``[B*H*W, C]``."""
        return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])

    def ls_rows(self, x, mask=None):
        with torch.no_grad():
            return {"main": self._rows(x + self.depthwise(x))}

    def ls_targets(self, y, mask=None):
        return {"main": self._rows(y)}

    def ls_assign(self, solutions):
        solution = solutions["main"]  # [C_in + 1, C_out]; the last row is the bias
        with torch.no_grad():
            self.pointwise.weight.copy_(solution[:-1].T[:, :, None, None])
            self.pointwise.bias.copy_(solution[-1])

    def ls_signature(self):
        # The rows depend on this layer's own depthwise weights, so no other
        # layer may share its XᵀX: make the signature unique to the instance.
        return ("dwconv", id(self))
    # --8<-- [end:least_squares]
