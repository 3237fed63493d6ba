"""The ``segmentation`` task: ``stitchframe build`` trains and evaluates every route as a segmentation backbone.

With ``task: {name: segmentation}`` in a spec the build wraps its SN-Net in a
:class:`~stitchframe_dense.StitchedBackbone` (every route gives the same
multi-scale feature shapes) and one shared :class:`~stitchframe_dense.FPNLiteHead`,
trains that model with pixel-wise cross-entropy, one sampled route per step
(the spec's ``train`` section: sampling, learning rates, ``freeze``,
checkpoints and resume as for classification; the head and the projections
train at ``train.stitch_lr``), and evaluates every route on the validation
split for mIoU, pixel accuracy and loss.  The report ranks routes by mIoU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

import stitchframe
from stitchframe import SpecError

from .backbone import StitchedBackbone
from .heads import FPNLiteHead, Segmenter
from .options import SegmentationOptions
from .segmentation import confusion_matrix, metrics_from_confusion

__all__ = ["SegmentationTask"]


class SegmentationTask(stitchframe.Task):
    """Semantic segmentation on a stitched backbone, one shared head for every route (SN-Netv2).

    The dataset yields ``(image [C, H, W], mask [H, W])`` pairs with integer
    class masks (``0 .. num_classes - 1``).  Metrics of every route: ``miou``
    (mean IoU over the classes present in targets or predictions, %),
    ``accuracy`` (pixel accuracy, %) and ``loss`` (mean cross-entropy per pixel).
    """

    Options = SegmentationOptions
    metric = "miou"
    metric_label = "mIoU %"

    def check(self, snnet: stitchframe.SNNet, splits: stitchframe.DatasetSplits, spec: stitchframe.Spec) -> None:
        """The data are images with masks of their size."""
        image, mask = _first_pair(splits, spec)
        if not (isinstance(mask, torch.Tensor) and mask.dim() == 2 and not mask.is_floating_point()):
            dims = mask.dim() if isinstance(mask, torch.Tensor) else 0
            what = f"targets of shape {tuple(mask.shape)}" if dims else f"one class per image ({mask!r})"
            raise SpecError(
                f"task: segmentation needs an integer mask [H, W] per image, but data {spec.data.name!r} gives "
                f"{what}; use a segmentation dataset (data.name: shapes or fashion_mnist_masks)"
            )
        if not (isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[-2:] == mask.shape):
            what = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise SpecError(f"task: segmentation needs images [C, H, W] with masks of their size; data "
                            f"{spec.data.name!r} gives images {what} and masks {tuple(mask.shape)}")

    def build_model(self, snnet: stitchframe.SNNet, splits: stitchframe.DatasetSplits) -> Segmenter:
        """A :class:`StitchedBackbone` over ``snnet`` and an :class:`FPNLiteHead` shared by every route."""
        o = self.options
        backbone = StitchedBackbone(snnet, fractions=o.fractions, out_channels=o.channels, strides=o.strides)
        return Segmenter(backbone, FPNLiteHead(backbone.out_channels, splits.num_classes, dim=o.head_dim))

    def loss(self, output: torch.Tensor, target: torch.Tensor, cfg: Any) -> torch.Tensor:
        """Pixel-wise cross-entropy (with ``train.label_smoothing``)."""
        return F.cross_entropy(output.float(), target, label_smoothing=cfg.label_smoothing)

    def batch_stats(self, output: torch.Tensor, target: torch.Tensor) -> list[float]:
        """The flattened confusion matrix (``K x K``), the summed pixel loss and the pixel count."""
        logits = output.float()
        conf = confusion_matrix(logits.argmax(1), target, logits.shape[1])
        loss = F.cross_entropy(logits, target, reduction="sum")
        return [*conf.reshape(-1).tolist(), float(loss), float(target.numel())]

    def metrics(self, stats: Sequence[float]) -> dict[str, float]:
        """``miou`` and ``accuracy`` (pixel accuracy) in percent, and ``loss`` per pixel."""
        k = math.isqrt(len(stats) - 2)
        m = metrics_from_confusion(torch.tensor(stats[: k * k], dtype=torch.float64).reshape(k, k))
        return {"miou": 100.0 * m.miou, "accuracy": 100.0 * m.pixel_accuracy, "loss": stats[-2] / stats[-1]}


def _first_pair(splits: stitchframe.DatasetSplits, spec: stitchframe.Spec) -> tuple[Any, Any]:
    item = splits.train[0] if len(splits.train) else None
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise SpecError(f"task: segmentation needs (image, mask) pairs, but data {spec.data.name!r} gives "
                        f"{type(item).__name__} items; use a segmentation dataset (data.name: shapes)")
    return item[0], item[1]
