"""Options of the built-in stitching layers, apart from the layers so that reading them imports no torch.

``stitchframe validate`` checks ``stitch.layer_options`` against these
classes without importing :mod:`stitchframe.stitch_layers`; the layer
classes refer to them as their ``Options``.
"""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["ProjectionOptions", "LowRankOptions"]


@attrs.frozen(kw_only=True)
class ProjectionOptions:
    """Options of the projection stitches (``linear``, ``conv1x1``)."""

    resize: Literal["auto", "area", "bilinear", "bicubic", "nearest"] = attrs.field(
        default="auto",
        validator=attrs.validators.in_(("auto", "area", "bilinear", "bicubic", "nearest")),
        metadata={"help": "How to resize when the two grids differ; auto: area to shrink, bilinear to grow."},
    )
    prefix: Literal["drop", "fold"] = attrs.field(
        default="drop",
        validator=attrs.validators.in_(("drop", "fold")),
        metadata={
            "help": "When the destination has no prefix tokens: drop the source's cls/distillation "
            "tokens, or fold their mean into every position."
        },
    )
    bias: bool = attrs.field(default=True, metadata={"help": "Learn a bias."})


@attrs.frozen(kw_only=True)
class LowRankOptions(ProjectionOptions):
    """Options of the ``lowrank`` stitch."""

    rank: int = attrs.field(
        default=8,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)],
        metadata={"help": "Rank r of the trainable update."},
    )
    alpha: float | None = attrs.field(
        default=None, metadata={"help": "Scale of the update is alpha / rank (default: alpha = rank)."}
    )
