"""stitchframe-dense: stitched backbones for dense prediction (SN-Netv2).

:class:`StitchedBackbone` turns any image SN-Net into a multi-scale backbone:
for every route it reads the activations at chosen fractions of the route's
depth and projects them to fixed widths and strides, so every route gives
features of the same shapes and one head serves them all; ``select(route)``
switches routes.  :class:`FPNLiteHead` is a small segmentation head,
:class:`ShapesSegmentation` a synthetic segmentation set generated on the fly,
and :func:`train_segmentation` / :func:`evaluate_segmentation` train a head
across routes and report mIoU per route.

This is a library on top of stitchframe's public API (an SN-Net, its routes,
anchors and the ``linear`` stitching layer); it registers nothing with the
plugin manager, so it has no entry point.
"""

from __future__ import annotations

from .backbone import StitchedBackbone, level_positions
from .data import SHAPE_CLASSES, ShapesSegmentation
from .heads import FPNLiteHead, Segmenter
from .segmentation import (
    SegMetrics,
    confusion_matrix,
    evaluate_segmentation,
    metrics_from_confusion,
    train_segmentation,
)

__version__ = "0.1.0"

__all__ = [
    "SHAPE_CLASSES",
    "FPNLiteHead",
    "SegMetrics",
    "Segmenter",
    "ShapesSegmentation",
    "StitchedBackbone",
    "__version__",
    "confusion_matrix",
    "evaluate_segmentation",
    "level_positions",
    "metrics_from_confusion",
    "train_segmentation",
]
