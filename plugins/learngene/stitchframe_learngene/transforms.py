"""Learned transformation matrices between students and their teacher.

While a student is distilled, every cut position ``p`` of it (``0``: the stem
output, ``k``: the output of block ``k-1``) is aligned with the teacher's
position at the same relative depth, ``round(p * D_teacher / D_student)``, and
two linear maps are learned there:

* ``to_teacher[p]``: student features -> teacher features (``W [C_t, C_s]``,
  ``b``); the feature-distillation loss goes through it, so it is the
  student's own "learngene" transformation;
* ``from_teacher[p]``: teacher features -> student features, fitted on
  detached features (it does not change the student).

A stitch from student ``i`` at ``p`` into student ``j`` at ``q`` is the
composition student_i -> teacher -> student_j: ``from_teacher_j[q] ∘
to_teacher_i[p]`` (``via: reverse``), or ``pinv(W_j) (W_i x + b_i - b_j)``
with ``to_teacher_j[q] = (W_j, b_j)`` (``via: pinv``).  The teacher itself has
identity transformations, so stitches into it are ``to_teacher_i[p]``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

__all__ = ["PoolTransforms", "aligned_position", "compose"]

Affine = tuple[torch.Tensor, torch.Tensor]


def aligned_position(pos: int, depth: int, teacher_depth: int) -> int:
    """The teacher position at the same relative depth as student position ``pos`` (round half up)."""
    return int(pos * teacher_depth / depth + 0.5)


@attrs.frozen(kw_only=True)
class PoolTransforms:
    """The transformations one anchor of a pool carries (CPU float64 tensors, one pair per position).

    Attributes:
        pool: Identity of the pool's teacher (its fingerprint); only anchors of one pool compose.
        teacher_positions: Teacher position aligned with each position ``0..depth``.
        to_teacher: ``(W [C_t, C_s], b [C_t])`` per position.
        from_teacher: ``(W [C_s, C_t], b [C_s])`` per position.
    """

    pool: str
    teacher_positions: tuple[int, ...]
    to_teacher: tuple[Affine, ...]
    from_teacher: tuple[Affine, ...]

    def __attrs_post_init__(self) -> None:
        n = len(self.teacher_positions)
        if len(self.to_teacher) != n or len(self.from_teacher) != n:
            raise ValueError(f"PoolTransforms: {n} positions but {len(self.to_teacher)}/{len(self.from_teacher)} maps")

    @classmethod
    def identity(cls, pool: str, widths: list[int]) -> PoolTransforms:
        """The teacher's own transformations: identities at every position (``widths`` per position)."""
        eye = tuple((torch.eye(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)) for c in widths)
        return cls(pool=pool, teacher_positions=tuple(range(len(widths))), to_teacher=eye, from_teacher=eye)


def compose(
    src: PoolTransforms, p: int, dst: PoolTransforms, q: int, via: Literal["reverse", "pinv"] = "reverse"
) -> Affine | None:
    """The stitch ``src`` position ``p`` -> ``dst`` position ``q`` through teacher space, as ``(W, b)``.

    Returns ``None`` when the two do not belong to one pool or their teacher
    widths differ (the caller falls back to least squares).
    """
    if src.pool != dst.pool:
        return None
    w_in, b_in = src.to_teacher[p]
    if via == "reverse":
        w_out, b_out = dst.from_teacher[q]
        if w_out.shape[1] != w_in.shape[0]:
            return None
        return w_out @ w_in, w_out @ b_in + b_out
    w_j, b_j = dst.to_teacher[q]
    if w_j.shape[0] != w_in.shape[0]:
        return None
    inv = torch.linalg.pinv(w_j)
    return inv @ w_in, inv @ (b_in - b_j)
