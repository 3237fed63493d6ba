"""The ``learngene:`` adapter: one pretrained teacher, a pool of distilled students.

``learngene:<student>`` loads one student of the pool described by the
anchor's options (:class:`~stitchframe_learngene.options.PoolOptions`);
``learngene:teacher`` loads the teacher itself.  The first anchor of a pool
that is not cached distils every uncached student of the pool together
(sharing the teacher's forward passes) and caches them all, so the pool's
other anchors, and later builds, only read files.

Every anchor returned carries its learned transformations as
``anchor.learngene`` (a :class:`~stitchframe_learngene.transforms.PoolTransforms`;
identities for the teacher), which the ``learngene`` stitching layer composes.
"""

from __future__ import annotations

import hashlib
import logging

import torch

from stitchframe import (
    Anchor,
    AnchorSpec,
    PluginError,
    Registries,
    StitchframeError,
    UnknownNameError,
    did_you_mean,
    load_anchor,
    structure_options,
)

from .cache import cache_path, load_student, save_student, student_key, teacher_fingerprint
from .distill import DistilledStudent, distil
from .options import TEACHER, PoolOptions, StudentSpec
from .students import StudentBuilder, build_student, choose_builder, num_classes_of
from .transforms import PoolTransforms

__all__ = ["load_learngene_anchor", "load_pool", "load_teacher", "student_structure"]

log = logging.getLogger("stitchframe_learngene")


def load_teacher(options: PoolOptions, registries: Registries, structure_only: bool = False) -> Anchor:
    """Load the pool's teacher through the adapter that owns its source.

    Torch's global RNG is seeded with ``distill.seed`` while loading (and
    restored after), so a teacher with random weights is the same teacher
    for every anchor of the pool.  ``structure_only`` builds it without
    weights (see :func:`stitchframe.load_anchor`).
    """
    spec = AnchorSpec(source=options.teacher, options=dict(options.teacher_options))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.distill.seed)
        return load_anchor(spec, registries, where="learngene options.teacher", structure_only=structure_only).eval()


def _seed(options: PoolOptions, student: StudentSpec) -> int:
    digest = hashlib.sha256(f"{options.distill.seed}:{student.name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _dataset(options: PoolOptions, teacher: Anchor, registries: Registries):
    entry = registries.datasets.get(options.data.name, where="learngene options.data.name")
    data_options = structure_options(entry.options, options.data.options, "learngene options.data.options")
    try:
        splits = entry.obj(data_options, teacher.preprocess)
    except StitchframeError:
        raise
    except Exception as exc:
        raise PluginError(
            f"Plugin {entry.plugin!r} failed to load dataset {options.data.name!r} (learngene options.data.name): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return splits.train


def load_pool(options: PoolOptions, registries: Registries, names: list[str] | None = None) -> dict[str, Anchor]:
    """Load students of a pool, distilling and caching those not cached yet.

    Args:
        options: The pool.
        registries: Registries to load the teacher and the data with.
        names: Students to return (default: all); every uncached student of the pool is distilled anyway.

    Raises:
        UnknownNameError: ``names`` has a student the pool lacks.

    Returns:
        The students by name, in eval mode on the CPU, each with ``anchor.learngene`` set.
    """
    all_names = [s.name for s in options.students]
    wanted = set(names) if names is not None else set(all_names)
    for name in sorted(wanted - set(all_names)):
        raise UnknownNameError(
            f"learngene: no student {name!r} in the pool of {options.teacher!r}; "
            f"{did_you_mean(name, all_names)}students: {', '.join(all_names)}"
        )
    teacher = load_teacher(options, registries)
    fingerprint = teacher_fingerprint(teacher)
    builder = choose_builder(teacher, options)
    classes = num_classes_of(teacher)
    built: dict[str, DistilledStudent] = {}
    todo = []
    for student in options.students:
        key = student_key(fingerprint, student, options, builder.name)
        path = cache_path(options, student, key)
        if path.exists() and student.name not in wanted:
            continue
        module = DistilledStudent(_build(builder, teacher, student, options, classes), teacher)
        if path.exists():
            load_student(module, path)
        else:
            todo.append((student, module, key, path))
        built[student.name] = module
    if todo:
        log.info("learngene: distilling %s from %s", ", ".join(s.name for s, *_ in todo), options.teacher)
        history = distil(teacher, [m for _, m, _, _ in todo], _dataset(options, teacher, registries), options.distill)
        for (student, module, key, path), hist in zip(todo, history):
            save_student(module, path, key=key, student=student, history=hist)
    out = {}
    for student in options.students:
        if student.name in wanted:
            anchor = built[student.name].anchor.eval()
            anchor.learngene = built[student.name].transforms(fingerprint)
            out[student.name] = anchor
    return out


def _build(
    builder: StudentBuilder, teacher: Anchor, student: StudentSpec, options: PoolOptions, classes: int
) -> Anchor:
    return build_student(builder, teacher, student, options, classes, _seed(options, student))


def student_structure(options: PoolOptions, registries: Registries, name: str) -> Anchor:
    """Student ``name`` of the pool built without weights: no distillation, no cache, no data.

    The teacher is built structure-only too (its shapes choose the student
    builder and the classes); stitchframe calls this on the meta device to
    rebuild an exported route.
    """
    teacher = load_teacher(options, registries, structure_only=True)
    student = next(s for s in options.students if s.name == name)
    return _build(choose_builder(teacher, options), teacher, student, options, num_classes_of(teacher)).eval()


def load_learngene_anchor(
    identifier: str, options: PoolOptions, registries: Registries, *, structure_only: bool = False
) -> Anchor:
    """Load ``learngene:<student>`` (or ``learngene:teacher``) of the pool in ``options``.

    With ``structure_only`` the anchor is built without weights
    (:func:`student_structure`, or the teacher's own structure-only build).

    Raises:
        UnknownNameError: No student of that name in the pool.
    """
    names = [s.name for s in options.students]
    if identifier == TEACHER and structure_only:
        return load_teacher(options, registries, structure_only=True)
    if identifier == TEACHER:
        teacher = load_teacher(options, registries)
        widths = [teacher.graph.spec_at(p).channels for p in teacher.graph.positions()]
        teacher.learngene = PoolTransforms.identity(teacher_fingerprint(teacher), widths)
        return teacher
    if identifier not in names:
        raise UnknownNameError(
            f"learngene: no student {identifier!r} in the pool of {options.teacher!r}; "
            f"{did_you_mean(identifier, [*names, TEACHER])}students: {', '.join(names)} (or '{TEACHER}')"
        )
    if structure_only:
        return student_structure(options, registries, identifier)
    return load_pool(options, registries, [identifier])[identifier]
