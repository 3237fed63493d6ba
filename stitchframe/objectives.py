"""Training objectives: logits from model outputs, cross-entropy and distillation, the teacher anchor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .errors import SpecError, TrainingError, did_you_mean
from .snnet import SNNet
from .spec import TrainSpec

__all__ = ["output_logits", "route_teachers", "training_loss", "teacher_name"]


def output_logits(output: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, a mapping or object with ``logits``, or a tuple's first item.

    Raises:
        TrainingError: No logits can be found.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TrainingError(
        f"The SN-Net returned a {type(output).__name__}; training needs logits: a tensor, or a dict/object "
        "with a 'logits' tensor (fix the anchor's head in its adapter)"
    )


def training_loss(logits: torch.Tensor, target: torch.Tensor, cfg: TrainSpec, teacher: torch.Tensor | None = None):
    """Cross-entropy, mixed with ``T²·KL(teacher ‖ student)`` at temperature ``T`` when distilling.

    Args:
        logits: Student logits ``[B, classes]`` (computed in float32).
        target: Class indices ``[B]`` or class probabilities ``[B, classes]``.
        cfg: The train spec (``loss``, ``distill_alpha``, ``temperature``, ``label_smoothing``).
        teacher: Teacher logits for ``loss: distill``.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
    if cfg.loss != "distill" or teacher is None:
        return ce
    t = cfg.temperature
    kl = F.kl_div(
        F.log_softmax(logits / t, dim=-1),
        F.log_softmax(teacher.float() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - cfg.distill_alpha) * ce + cfg.distill_alpha * (t * t) * kl


#: ``train.teacher`` value that makes every stitched route learn from its own end anchor.
END_TEACHER = "end"


def route_teachers(snnet: SNNet, cfg: TrainSpec) -> list[str | None]:
    """The teacher anchor of every route (``None``: plain cross-entropy), by route id.

    Without ``loss: distill`` no route has one. With ``teacher: end`` each
    stitched route learns from the anchor it ends in (whose head it shares)
    and anchor routes from the labels alone; otherwise every route learns
    from :func:`teacher_name`.

    Raises:
        SpecError: ``train.teacher`` names no anchor.
    """
    if cfg.loss != "distill":
        return [None] * len(snnet.routes)
    if cfg.teacher == END_TEACHER and END_TEACHER not in snnet.anchors:
        return [None if r.is_anchor else r.segments[-1].anchor for r in snnet.routes]
    return [teacher_name(snnet, cfg)] * len(snnet.routes)


def teacher_name(snnet: SNNet, cfg: TrainSpec) -> str:
    """The teacher anchor: ``cfg.teacher`` or the anchor with the most FLOPs.

    Raises:
        SpecError: ``train.teacher`` names no anchor.
    """
    names = list(snnet.anchors)
    if cfg.teacher is None:
        return max(names, key=lambda n: snnet.anchors[n].graph.flops)
    if cfg.teacher not in snnet.anchors:
        raise SpecError(
            f"train.teacher: unknown anchor {cfg.teacher!r}; {did_you_mean(cfg.teacher, names)}"
            f"anchors: {', '.join(names)}"
        )
    return cfg.teacher
