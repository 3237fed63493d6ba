"""Training a segmentation head on a stitched backbone, and mIoU per route."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from stitchframe import SpecError

from .heads import Segmenter

__all__ = ["SegMetrics", "confusion_matrix", "evaluate_segmentation", "metrics_from_confusion", "train_segmentation"]


@attrs.frozen(kw_only=True)
class SegMetrics:
    """Segmentation metrics of one route.

    Attributes:
        miou: Mean intersection over union over the classes present (in targets or predictions).
        pixel_accuracy: Fraction of pixels labelled correctly.
        iou: IoU per class (``nan`` for a class absent from both).
    """

    miou: float
    pixel_accuracy: float
    iou: tuple[float, ...]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts, rows: target class, columns: predicted class (``int64``)."""
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(conf: torch.Tensor) -> SegMetrics:
    """mIoU, pixel accuracy and per-class IoU from a confusion matrix."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = union > 0
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return SegMetrics(miou=miou, pixel_accuracy=float(tp.sum() / conf.sum().clamp_min(1)), iou=tuple(iou.tolist()))


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_segmentation(
    model: Segmenter,
    dataset: Dataset,
    *,
    routes: Sequence[int],
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    train_backbone: bool = False,
    seed: int = 0,
) -> dict[int, list[float]]:
    """Train the head (and the projections, and the SN-Net when ``train_backbone``) across routes.

    Step ``k`` trains route ``routes[k % len(routes)]`` (round robin, so each
    route gets the same number of steps), with pixel-wise cross-entropy and
    AdamW.  Runs where the model is; bf16 autocast on CUDA.  The SN-Net's
    ``requires_grad`` flags and every module's mode are restored afterwards.

    Returns:
        The loss of every step, by route id.

    Raises:
        SpecError: No routes, or a route the backbone does not serve.
    """
    if not routes:
        raise SpecError("train_segmentation: routes is empty; pass the route ids to train")
    device = _device_of(model)
    snnet = model.backbone.snnet
    flags = [(p, p.requires_grad) for p in snnet.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    if not train_backbone:
        for p, _ in flags:
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=g)
    history: dict[int, list[float]] = {r: [] for r in routes}
    model.train()
    if not train_backbone:
        snnet.eval()  # frozen: no dropout, BatchNorm statistics kept
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    try:
        step, batches = 0, iter(loader)
        while step < steps:
            try:
                images, masks = next(batches)
            except StopIteration:
                batches = iter(loader)
                continue
            route = routes[step % len(routes)]
            model.select(route)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(images.to(device))
            loss = F.cross_entropy(logits.float(), masks.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history[route].append(loss.item())
            step += 1
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    return history


@torch.no_grad()
def evaluate_segmentation(
    model: Segmenter, dataset: Dataset, *, routes: Sequence[int], num_classes: int, batch_size: int = 32
) -> dict[int, SegMetrics]:
    """mIoU and pixel accuracy of every route on ``dataset`` (eval mode, restored afterwards).

    Returns:
        Metrics by route id.
    """
    device = _device_of(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    selected = model.backbone.selected
    out = {}
    try:
        for route in routes:
            model.select(route)
            conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
            for images, masks in DataLoader(dataset, batch_size=batch_size):
                pred = model(images.to(device)).argmax(1).cpu()
                conf += confusion_matrix(pred, masks, num_classes)
            out[route] = metrics_from_confusion(conf)
    finally:
        model.select(selected)
        for m, mode in modes:
            m.training = mode
    return out
