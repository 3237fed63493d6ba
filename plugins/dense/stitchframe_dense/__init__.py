"""stitchframe-dense: stitched backbones for dense prediction (SN-Netv2).

:class:`StitchedBackbone` turns any image SN-Net into a multi-scale backbone:
for every route it reads the activations at chosen fractions of the route's
depth and projects them to fixed widths and strides, so every route gives
features of the same shapes and one head serves them all; ``select(route)``
switches routes.  :class:`FPNLiteHead` is a small segmentation head,
:class:`ShapesSegmentation` a synthetic segmentation set generated on the fly,
:class:`FashionMNISTMasks` Fashion-MNIST with masks derived from its pixels,
and :func:`train_segmentation` / :func:`evaluate_segmentation` train a head
across routes and report mIoU per route.

As a plugin (entry point ``dense``) it registers, for specs and the CLI:

* the task ``segmentation`` (:class:`SegmentationTask`, options
  :class:`SegmentationOptions`): ``stitchframe build`` trains and evaluates
  every route of the SN-Net as a segmentation backbone with one shared head
  and ranks routes by mIoU;
* the datasets ``shapes`` (:class:`ShapesOptions`) and
  ``fashion_mnist_masks`` (:class:`FashionMNISTMasksOptions`).

Registering them imports no torch (lazy references, torch-free options).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import stitchframe

from .options import FashionMNISTMasksOptions, SegmentationOptions, ShapesOptions

if TYPE_CHECKING:
    from .backbone import StitchedBackbone, level_positions
    from .data import (
        FASHION_MASK_CLASSES,
        SHAPE_CLASSES,
        FashionMNISTMasks,
        ShapesSegmentation,
        load_fashion_mnist_masks,
        load_shapes,
    )
    from .heads import FPNLiteHead, Segmenter
    from .segmentation import (
        SegMetrics,
        confusion_matrix,
        evaluate_segmentation,
        metrics_from_confusion,
        train_segmentation,
    )
    from .task import SegmentationTask

# torch loads on first use (PEP 562): registering the plugin and validating specs import none of it
_LAZY = {
    **dict.fromkeys(("StitchedBackbone", "level_positions"), "backbone"),
    **dict.fromkeys(("FASHION_MASK_CLASSES", "SHAPE_CLASSES", "FashionMNISTMasks", "ShapesSegmentation",
                     "load_fashion_mnist_masks", "load_shapes"), "data"),
    **dict.fromkeys(("FPNLiteHead", "Segmenter"), "heads"),
    **dict.fromkeys(("SegMetrics", "confusion_matrix", "evaluate_segmentation", "metrics_from_confusion",
                     "train_segmentation"), "segmentation"),
    "SegmentationTask": "task",
}

__version__ = "0.1.0"

__all__ = [
    "FASHION_MASK_CLASSES",
    "SHAPE_CLASSES",
    "FPNLiteHead",
    "FashionMNISTMasks",
    "FashionMNISTMasksOptions",
    "SegMetrics",
    "SegmentationOptions",
    "SegmentationTask",
    "Segmenter",
    "ShapesOptions",
    "ShapesSegmentation",
    "StitchedBackbone",
    "__version__",
    "confusion_matrix",
    "evaluate_segmentation",
    "level_positions",
    "load_fashion_mnist_masks",
    "load_shapes",
    "metrics_from_confusion",
    "stitchframe_register_datasets",
    "stitchframe_register_tasks",
    "train_segmentation",
]


@stitchframe.hookimpl
def stitchframe_register_tasks(register) -> None:
    """Register the ``segmentation`` task."""
    register("segmentation", "stitchframe_dense.task:SegmentationTask", options=SegmentationOptions)


@stitchframe.hookimpl
def stitchframe_register_datasets(register) -> None:
    """Register the ``shapes`` and ``fashion_mnist_masks`` segmentation datasets."""
    register("shapes", "stitchframe_dense.data:load_shapes", options=ShapesOptions)
    register("fashion_mnist_masks", "stitchframe_dense.data:load_fashion_mnist_masks",
             options=FashionMNISTMasksOptions)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
