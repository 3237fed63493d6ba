"""Options of the ``learngene:`` adapter and the ``learngene`` stitching layer.

A pool is written once and shared by every anchor of the spec that names one
of its students, with a YAML anchor (``&pool``) and aliases (``*pool``)::

    anchors:
      - source: learngene:small
        options: &pool
          teacher: timm:deit_base_patch16_224
          teacher_options: {pretrained: true}
          students:
            - {name: small, width: 192, depth: 6}
            - {name: medium, width: 384, depth: 8}
          data: {name: imagefolder, options: {root: /data/imagenet}}
          distill: {steps: 20000, batch_size: 128}
      - {source: learngene:medium, options: *pool}
"""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs

from stitchframe import ProjectionOptions

__all__ = ["BUILDERS", "DataOptions", "DistillOptions", "LearngeneStitchOptions", "PoolOptions", "StudentSpec"]

_v = attrs.validators

#: Student builders a pool may name (``auto`` picks the first that claims the teacher).
BUILDERS = ("auto", "timm_vit", "vit")

#: The identifier that loads the pool's teacher itself (with identity transformations).
TEACHER = "teacher"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _check_name(_inst: Any, _attr: attrs.Attribute, value: str) -> None:
    if not re.match(r"^[a-z][a-z0-9_]*$", value):
        raise ValueError(f"'name' must be lowercase snake_case (it becomes the anchor name), got {value!r}")
    if value == TEACHER:
        raise ValueError(
            f"'name' {TEACHER!r} is reserved for the teacher itself (learngene:{TEACHER}); rename the student"
        )


@attrs.frozen(kw_only=True)
class StudentSpec:
    """One student of the pool: a narrower and/or shallower model of the teacher's family."""

    name: str = attrs.field(
        validator=[_v.instance_of(str), _check_name],
        metadata=_help("Student name: the identifier in 'learngene:<name>' and the anchor name."),
    )
    width: int = attrs.field(
        validator=[_v.instance_of(int), _v.ge(4)], metadata=_help("Embedding width (channels of every block).")
    )
    depth: int = attrs.field(validator=[_v.instance_of(int), _v.ge(1)], metadata=_help("Number of blocks."))
    heads: int | None = attrs.field(
        default=None,
        validator=_v.optional([_v.instance_of(int), _v.ge(1)]),
        metadata=_help("Attention heads (must divide width); default max(1, width // 64), as DeiT's 64-wide heads."),
    )
    mlp_ratio: float = attrs.field(
        default=4.0, validator=_v.gt(0), metadata=_help("Hidden width of the MLPs as a multiple of width.")
    )

    def __attrs_post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"student {self.name!r}: heads {self.num_heads} do not divide width {self.width}")

    @property
    def num_heads(self) -> int:
        """Attention heads, with the default applied."""
        return self.heads if self.heads is not None else max(1, self.width // 64)


@attrs.frozen(kw_only=True)
class DataOptions:
    """The distillation data: a dataset registered with stitchframe (its training split is used)."""

    name: str = attrs.field(
        validator=_v.instance_of(str), metadata=_help("Registered dataset (digits, synthetic, imagefolder, ...).")
    )
    options: dict[str, Any] = attrs.field(factory=dict, metadata=_help("Options of the dataset loader."))


@attrs.frozen(kw_only=True)
class DistillOptions:
    """How the students are distilled (the budget and the loss weights)."""

    steps: int = attrs.field(default=500, validator=[_v.instance_of(int), _v.ge(0)], metadata=_help("Optimizer steps."))
    batch_size: int = attrs.field(default=64, validator=_v.ge(1), metadata=_help("Batch size."))
    lr: float = attrs.field(default=1e-3, validator=_v.gt(0), metadata=_help("AdamW learning rate (cosine decay)."))
    weight_decay: float = attrs.field(default=0.05, validator=_v.ge(0), metadata=_help("AdamW weight decay."))
    feature_weight: float = attrs.field(
        default=1.0,
        validator=_v.ge(0),
        metadata=_help("Weight of the block-wise feature loss (through the learned transformations)."),
    )
    block_weight: float = attrs.field(
        default=0.0,
        validator=_v.ge(0),
        metadata=_help(
            "Weight of the block-wise loss: every block, fed the teacher's activation through the "
            "teacher->student map, must give the teacher's next aligned activation (off by default: "
            "no better stitches on the digits pool, at twice the cost)."
        ),
    )
    logit_weight: float = attrs.field(
        default=1.0, validator=_v.ge(0), metadata=_help("Weight of the logit distillation loss (T² KL).")
    )
    ce_weight: float = attrs.field(
        default=0.0, validator=_v.ge(0), metadata=_help("Weight of cross-entropy on the dataset's labels.")
    )
    temperature: float = attrs.field(default=1.0, validator=_v.gt(0), metadata=_help("Distillation temperature."))
    refit_batches: int = attrs.field(
        default=8,
        validator=[_v.instance_of(int), _v.ge(0)],
        metadata=_help(
            "After distilling, refit every transformation by least squares on this many batches of the "
            "data with the final student (0: keep the maps as trained)."
        ),
    )
    seed: int = attrs.field(default=0, validator=_v.instance_of(int), metadata=_help("Seed of data order and inits."))
    device: Literal["auto", "cpu", "cuda"] = attrs.field(
        default="auto",
        validator=_v.in_(("auto", "cpu", "cuda")),
        metadata=_help("Where to distil; auto: CUDA when available (bf16 autocast there)."),
    )


@attrs.frozen(kw_only=True)
class PoolOptions:
    """Options of a ``learngene:<student>`` anchor: the whole pool it belongs to."""

    teacher: str = attrs.field(
        validator=_v.instance_of(str),
        metadata=_help("Source of the large pretrained model to distil (timm:deit_base_patch16_224, ...)."),
    )
    teacher_options: dict[str, Any] = attrs.field(
        factory=dict, metadata=_help("Options of the teacher's adapter (as anchors[i].options for that source).")
    )
    students: list[StudentSpec] = attrs.field(
        validator=_v.min_len(1), metadata=_help("The students distilled from the teacher (names unique).")
    )
    data: DataOptions = attrs.field(metadata=_help("Distillation data."))
    distill: DistillOptions = attrs.field(factory=DistillOptions, metadata=_help("Distillation budget and losses."))
    builder: Literal["auto", "timm_vit", "vit"] = attrs.field(
        default="auto",
        validator=_v.in_(BUILDERS),
        metadata=_help(
            "How students are built: timm_vit (timm ViTs of the teacher's own model), vit (the "
            "plugin's ViT for any tokens teacher), auto (timm_vit for timm ViTs, else vit)."
        ),
    )
    cache_dir: str | None = attrs.field(
        default=None,
        metadata=_help(
            "Where distilled students are cached; default $STITCHFRAME_CACHE/learngene or "
            "~/.cache/stitchframe/learngene."
        ),
    )

    def __attrs_post_init__(self) -> None:
        names = [s.name for s in self.students]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"students: name {dup[0]!r} is used twice; give every student a unique name")


@attrs.frozen(kw_only=True)
class LearngeneStitchOptions(ProjectionOptions):
    """Options of the ``learngene`` stitching layer."""

    via: Literal["reverse", "pinv"] = attrs.field(
        default="reverse",
        validator=_v.in_(("reverse", "pinv")),
        metadata=_help(
            "How teacher space is mapped into the destination student: reverse (the teacher->student "
            "map learned while distilling) or pinv (the pseudo-inverse of its student->teacher map)."
        ),
    )
    calibrate: bool = attrs.field(
        default=False,
        metadata=_help(
            "Let least-squares calibration overwrite the transformation init (layers joining anchors "
            "without transformations are always calibrated)."
        ),
    )
