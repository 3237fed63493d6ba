"""Block-wise distillation of several students from one teacher, in one pass over the data.

Every step runs the teacher once (no gradients) and each student once.  A
student's loss is

``feature_weight · mean_p |U_p(s_p) - t_a(p)|² / var(t_a(p))
+ block_weight · mean_k |U_k+1(B_k(D_k(t_a(k)))) - t_a(k+1)|² / var(t_a(k+1))
+ logit_weight · T² · KL(teacher ‖ student) + ce_weight · CE(student, labels)
+ mean_p |D_p(t_a(p)) - s_p|² / var(s_p)``

where ``s_p`` is the student's activation at cut position ``p``, ``t_a(p)``
the teacher's at the aligned position, ``U_p`` the learned student -> teacher
transformation, ``D_p`` the teacher -> student one and ``B_k`` the student's
block ``k``.  The first term distils features along the student's own path;
the block-wise term trains every block on teacher activations brought into
the student by ``D`` and read out by ``U``, so a block accepts what another
student's ``U`` followed by this student's ``D`` hands it, which is what a
stitch initialised from the transformations does.  The last term ties
``D_p`` to the student's own activations (the student is not trained by it).  Each student has its own AdamW and cosine schedule; its
initialisation depends only on its own seed, and the data order only on
``distill.seed``, so a student trained alone equals one trained in a group.

The maps trained by SGD lag behind the student they are trained with, so
after the last step both directions are refitted by least squares
(:func:`refit_transforms`, ``distill.refit_batches`` batches, float64 normal
equations) on the final student; composing the refitted maps comes close to
fitting each student pair directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stitchframe import Anchor, NormalEquations, StitchframeError, TrainingError, output_logits

from .options import DistillOptions
from .transforms import PoolTransforms, aligned_position

__all__ = ["DistilledStudent", "distil", "refit_transforms", "resolve_device", "run_with_activations"]


class DistilledStudent(nn.Module):
    """A student anchor with its transformations to and from the teacher (what is trained and cached).

    Args:
        anchor: The student.
        teacher: The teacher (only its depth and widths are read).
    """

    def __init__(self, anchor: Anchor, teacher: Anchor) -> None:
        super().__init__()
        self.anchor = anchor
        self.teacher_positions = [aligned_position(p, anchor.depth, teacher.depth) for p in anchor.graph.positions()]
        s_widths = [anchor.graph.spec_at(p).channels for p in anchor.graph.positions()]
        t_widths = [teacher.graph.spec_at(a).channels for a in self.teacher_positions]
        self.to_teacher = nn.ModuleList(nn.Linear(s, t) for s, t in zip(s_widths, t_widths))
        self.from_teacher = nn.ModuleList(nn.Linear(t, s) for s, t in zip(s_widths, t_widths))

    def transforms(self, pool: str) -> PoolTransforms:
        """The learned maps as :class:`PoolTransforms` (CPU float64 copies)."""

        def affine(m: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
            return m.weight.detach().double().cpu().clone(), m.bias.detach().double().cpu().clone()

        return PoolTransforms(
            pool=pool,
            teacher_positions=tuple(self.teacher_positions),
            to_teacher=tuple(affine(m) for m in self.to_teacher),
            from_teacher=tuple(affine(m) for m in self.from_teacher),
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        StitchframeError: ``cuda`` was asked for but there is no CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StitchframeError("learngene: distill.device is 'cuda' but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def run_with_activations(anchor: Anchor, inputs: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the anchor route, returning the activation at every cut position and the logits."""
    ctx = anchor.prepare(inputs)
    x = anchor.run_stem(inputs, ctx)
    acts = [x]
    for i in range(anchor.depth):
        x = anchor.run_blocks(x, i, i + 1, ctx)
        acts.append(x)
    return acts, output_logits(anchor.run_head(x, ctx))


def _batches(dataset: Dataset, cfg: DistillOptions) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches; the order depends only on ``cfg.seed``."""
    if len(dataset) < cfg.batch_size:
        raise StitchframeError(
            f"learngene: the distillation data has {len(dataset)} examples, fewer than distill.batch_size "
            f"{cfg.batch_size}; lower the batch size or use more data"
        )
    g = torch.Generator().manual_seed(cfg.seed)
    while True:
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g)
        for batch in loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)):
                raise StitchframeError(
                    f"learngene: distillation data must yield (image tensor, label) pairs; got a {type(batch).__name__}"
                )
            yield batch[0], batch[1]


def _nmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error relative to the target's variance (so every position weighs alike)."""
    return F.mse_loss(pred, target) / target.detach().var().clamp_min(1e-6)


def _block_loss(student: DistilledStudent, inputs: torch.Tensor, t_acts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each block, fed the teacher's activation mapped into the student, must give the teacher's next one."""
    anchor, pos = student.anchor, student.teacher_positions
    ctx = anchor.prepare(inputs)
    total = t_acts[0].new_zeros((), dtype=torch.float32)
    for k in range(anchor.depth):
        x = student.from_teacher[k](t_acts[pos[k]].float())
        y = anchor.run_blocks(x, k, k + 1, ctx)
        total = total + _nmse(student.to_teacher[k + 1](y.float()), t_acts[pos[k + 1]].float())
    return total / anchor.depth


def _student_loss(
    student: DistilledStudent,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    t_acts: Sequence[torch.Tensor],
    t_logits: torch.Tensor,
    cfg: DistillOptions,
) -> tuple[torch.Tensor, dict[str, float]]:
    acts, logits = run_with_activations(student.anchor, inputs)
    feat = rev = logits.new_zeros((), dtype=torch.float32)
    for p, a in enumerate(student.teacher_positions):
        s, t = acts[p].float(), t_acts[a].float()
        feat = feat + _nmse(student.to_teacher[p](s), t)
        rev = rev + _nmse(student.from_teacher[p](t), s.detach())
    n = len(student.teacher_positions)
    feat, rev = feat / n, rev / n
    block = _block_loss(student, inputs, t_acts) if cfg.block_weight else feat.new_zeros(())
    temp = cfg.temperature
    kl = (
        F.kl_div(
            F.log_softmax(logits.float() / temp, -1),
            F.log_softmax(t_logits.float() / temp, -1),
            reduction="batchmean",
            log_target=True,
        )
        * temp
        * temp
    )
    loss = cfg.feature_weight * feat + cfg.block_weight * block + cfg.logit_weight * kl + rev
    if cfg.ce_weight:
        loss = loss + cfg.ce_weight * F.cross_entropy(logits.float(), labels)
    parts = {"loss": loss, "feature": feat, "block": block, "logit": kl, "reverse": rev}
    return loss, {k: v.item() for k, v in parts.items()}


def distil(
    teacher: Anchor, students: Sequence[DistilledStudent], dataset: Dataset, cfg: DistillOptions
) -> list[list[dict[str, float]]]:
    """Distil ``students`` from ``teacher`` for ``cfg.steps`` steps, in place.

    The teacher runs in eval mode without gradients and is left unchanged
    (mode and device restored); students end in eval mode on the CPU.

    Returns:
        Per student, the losses of every step (``loss``, ``feature``, ``logit``, ``reverse``).

    Raises:
        TrainingError: A loss became NaN or infinite.
    """
    device = resolve_device(cfg.device)
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    teacher_mode = teacher.training
    teacher_device = next(teacher.parameters()).device
    teacher.eval().to(device)
    opts = []
    for s in students:
        s.to(device).train()
        opts.append(torch.optim.AdamW(s.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay))
    history: list[list[dict[str, float]]] = [[] for _ in students]
    batches = _batches(dataset, cfg)
    try:
        for step in range(cfg.steps):
            inputs, labels = (t.to(device) for t in next(batches))
            factor = 0.5 * (1.0 + math.cos(math.pi * step / max(1, cfg.steps)))
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                t_acts, t_logits = run_with_activations(teacher, inputs)
            for s, opt, hist in zip(students, opts, history):
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * factor
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss, parts = _student_loss(s, inputs, labels, t_acts, t_logits, cfg)
                if not math.isfinite(parts["loss"]):
                    raise TrainingError(
                        f"learngene: the distillation loss of student {s.anchor.name!r} is {parts['loss']} at "
                        f"step {step}; lower distill.lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                hist.append(parts)
        if cfg.refit_batches:
            refit_transforms(teacher, students, (next(batches)[0] for _ in range(cfg.refit_batches)), device)
    finally:
        teacher.train(teacher_mode).to(teacher_device)
        for s in students:
            s.eval().cpu()
    return history


@torch.no_grad()
def refit_transforms(
    teacher: Anchor, students: Sequence[DistilledStudent], batches: Iterable[torch.Tensor], device: torch.device
) -> None:
    """Refit every student's maps, both directions, by least squares on ``batches`` (eval mode, float64)."""
    for s in students:
        s.eval()
    normal = [[(None, None) for _ in s.teacher_positions] for s in students]
    for inputs in batches:
        inputs = inputs.to(device)
        t_acts, _ = run_with_activations(teacher, inputs)
        for k, s in enumerate(students):
            acts, _ = run_with_activations(s.anchor, inputs)
            for p, a in enumerate(s.teacher_positions):
                x, t = acts[p].reshape(-1, acts[p].shape[-1]), t_acts[a].reshape(-1, t_acts[a].shape[-1])
                fwd, rev = normal[k][p]
                if fwd is None:
                    fwd, rev = NormalEquations(x.shape[1], t.shape[1]), NormalEquations(t.shape[1], x.shape[1])
                    normal[k][p] = (fwd, rev)
                fwd.add(x, t)
                rev.add(t, x)
    for s, eqs in zip(students, normal):
        for p, (fwd, rev) in enumerate(eqs):
            if fwd is None:
                continue
            for layer, eq in ((s.to_teacher[p], fwd), (s.from_teacher[p], rev)):
                sol = eq.solve()
                layer.weight.copy_(sol[:-1].T.to(layer.weight))
                layer.bias.copy_(sol[-1].to(layer.bias))
