"""Optimizer, parameter groups, freezing and learning-rate schedule for SN-Net training."""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import TrainingError
from .snnet import SNNet
from .spec import TrainSpec

__all__ = ["build_optimizer", "frozen_modules", "lr_factor"]

#: Parameters (by final name) never decayed besides norms and biases (1-D tensors).
_NO_DECAY_NAMES = ("cls_token", "dist_token", "reg_token", "pos_embed", "absolute_pos_embed", "position_embeddings")


def lr_factor(step: int, *, total: int, warmup: int, scheduler: str) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup`` steps, then constant or a cosine decay that
    reaches zero after ``total`` steps.
    """
    if step < warmup:
        return (step + 1) / warmup
    if scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def frozen_modules(snnet: SNNet, freeze: list[str]) -> list[nn.Module]:
    """The modules that ``TrainSpec.freeze`` names.

    ``anchors``: whole anchors; ``stitches``: all stitching layers; ``stems``:
    every anchor's stem and context module; ``heads``: every anchor's final
    norm and head; ``batchnorm``: every BatchNorm layer (kept in eval mode, so
    its running statistics stay those of the pretrained anchor).
    """
    mods: list[nn.Module] = []
    for part in freeze:
        if part == "anchors":
            mods += list(snnet.anchors.values())
        elif part == "stitches":
            mods += list(snnet.stitches.values())
        elif part == "stems":
            mods += [m for a in snnet.anchors.values() for m in (a.stem, a.context) if m is not None]
        elif part == "heads":
            mods += [m for a in snnet.anchors.values() for m in (a.norm, a.head) if m is not None]
        elif part == "batchnorm":
            mods += [m for m in snnet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return mods


def build_optimizer(snnet: SNNet, cfg: TrainSpec, extra: nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in up to six groups.

    Anchors train at ``cfg.lr`` and stitching layers at ``cfg.stitch_lr``
    (default ``10 * lr``), as do the parameters of ``extra`` that are not the
    SN-Net's (a task's own layers, such as a dense head: group ``task``);
    1-D parameters (norms, biases) and token/position embeddings get no
    weight decay.  Each group records its ``base_lr`` and ``name``.
    Parameters with ``requires_grad=False`` are left out.

    Raises:
        TrainingError: Nothing is trainable.
    """
    stitch_lr = cfg.stitch_lr if cfg.stitch_lr is not None else 10.0 * cfg.lr
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    named = [(n, p, "stitches" if n.startswith("stitches.") else "anchors") for n, p in snnet.named_parameters()]
    if extra is not None:
        named += [(n, p, "task") for n, p in extra.named_parameters()]  # the SN-Net's are seen already
    for name, p, part in named:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decay = p.ndim > 1 and name.rsplit(".", 1)[-1] not in _NO_DECAY_NAMES
        buckets.setdefault((part, decay), []).append(p)
    if not buckets:
        raise TrainingError(
            f"Nothing to train: train.freeze={list(cfg.freeze)!r} leaves no trainable parameter; remove a part from it"
        )
    groups = []
    for part in ("anchors", "stitches", "task"):
        lr = cfg.lr if part == "anchors" else stitch_lr
        for decay in (True, False):
            if (part, decay) in buckets:
                groups.append({
                    "params": buckets[(part, decay)],
                    "lr": lr,
                    "base_lr": lr,
                    "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": f"{part}/{'decay' if decay else 'no_decay'}",
                })
    return torch.optim.AdamW(groups, lr=cfg.lr)
