"""stitchframe-learngene: Learngene-style pools, one pretrained teacher distilled into an elastic family.

Learngene Pool (AAAI 2024) distils one large pretrained model into several
small ones and stitches their blocks, so a single pretrained model yields a
whole SN-Net.  This plugin registers:

* the ``learngene:`` anchor adapter: ``learngene:<student>`` is one student of
  a pool (teacher, student widths/depths, data and budget in the anchor's
  options, :class:`PoolOptions`), distilled block-wise with learned linear
  transformations and cached as safetensors; ``learngene:teacher`` is the
  teacher itself;
* the ``learngene`` stitching layer, initialised by composing the students'
  transformations (student_i -> teacher -> student_j) instead of least squares;
* the ``learngene`` stitch space, stitching students where they sit at the
  same depth of the teacher (where the transformations compose).

Students are built for ViT-style teachers: timm vision transformers (students
built by timm) and any teacher whose activations are tokens on one grid.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import stitchframe

from .options import DataOptions, DistillOptions, LearngeneStitchOptions, PoolOptions, StudentSpec
from .space import LearngeneSpace, LearngeneSpaceOptions, relative_depth

if TYPE_CHECKING:
    from .adapter import load_learngene_anchor, load_pool, load_teacher, student_structure
    from .cache import cache_dir, student_key, teacher_fingerprint
    from .distill import DistilledStudent, distil, run_with_activations
    from .stitch import LearngeneStitch
    from .students import STUDENT_BUILDERS, PoolViT, StudentBuilder, choose_builder, vit_anchor
    from .transforms import PoolTransforms, aligned_position, compose

# torch and the heavy modules load on first use (PEP 562): registering the plugin and validating
# specs import neither
_LAZY = {
    "load_learngene_anchor": "adapter",
    "load_pool": "adapter",
    "load_teacher": "adapter",
    "student_structure": "adapter",
    "cache_dir": "cache",
    "student_key": "cache",
    "teacher_fingerprint": "cache",
    "DistilledStudent": "distill",
    "distil": "distill",
    "run_with_activations": "distill",
    "LearngeneStitch": "stitch",
    "STUDENT_BUILDERS": "students",
    "PoolViT": "students",
    "StudentBuilder": "students",
    "choose_builder": "students",
    "vit_anchor": "students",
    "PoolTransforms": "transforms",
    "aligned_position": "transforms",
    "compose": "transforms",
}

__version__ = "0.1.0"

__all__ = [
    "STUDENT_BUILDERS",
    "DataOptions",
    "DistillOptions",
    "DistilledStudent",
    "LearngeneSpace",
    "LearngeneSpaceOptions",
    "LearngeneStitch",
    "LearngeneStitchOptions",
    "PoolOptions",
    "PoolTransforms",
    "PoolViT",
    "StudentBuilder",
    "StudentSpec",
    "__version__",
    "aligned_position",
    "cache_dir",
    "choose_builder",
    "compose",
    "distil",
    "load_learngene_anchor",
    "load_pool",
    "load_teacher",
    "relative_depth",
    "run_with_activations",
    "student_key",
    "student_structure",
    "teacher_fingerprint",
    "vit_anchor",
]


@stitchframe.hookimpl
def stitchframe_register_anchor_adapters(register) -> None:
    """Register the ``learngene`` source prefix."""
    register("learngene", "stitchframe_learngene.adapter:load_learngene_anchor", options=PoolOptions)


@stitchframe.hookimpl
def stitchframe_register_stitch_layers(register) -> None:
    """Register the ``learngene`` stitching layer."""
    register("learngene", "stitchframe_learngene.stitch:LearngeneStitch", options=LearngeneStitchOptions)


@stitchframe.hookimpl
def stitchframe_register_stitch_spaces(register) -> None:
    """Register the ``learngene`` stitch space."""
    register("learngene", LearngeneSpace)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
