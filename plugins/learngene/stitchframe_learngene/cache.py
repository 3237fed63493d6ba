"""The student cache: distilled students as safetensors, keyed by what determines them.

The key hashes the teacher (its source, options and a fingerprint of its
weights), the student's config, the student builder, the distillation data
and the distillation options (all but the device).  Changing any of them
distils again; loading the same pool again reads the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from stitchframe import load_module_state, save_module

from .options import PoolOptions, StudentSpec

__all__ = [
    "CACHE_FORMAT",
    "cache_dir",
    "cache_path",
    "load_student",
    "save_student",
    "student_key",
    "teacher_fingerprint",
]

#: Bumped when what is cached changes meaning; part of every key.
CACHE_FORMAT = 1
_KIND = "learngene_student"


def cache_dir(options: PoolOptions) -> Path:
    """``options.cache_dir``, else ``$STITCHFRAME_CACHE/learngene``, else ``~/.cache/stitchframe/learngene``."""
    if options.cache_dir is not None:
        return Path(options.cache_dir).expanduser()
    root = os.environ.get("STITCHFRAME_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "stitchframe") / "learngene"


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 over the teacher's state (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def student_key(fingerprint: str, student: StudentSpec, options: PoolOptions, builder: str) -> str:
    """The cache key of one student (hex SHA-256)."""
    distill = attrs.asdict(options.distill)
    distill.pop("device")
    payload: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "teacher": {"source": options.teacher, "options": options.teacher_options, "fingerprint": fingerprint},
        "student": attrs.asdict(student),
        "builder": builder,
        "data": attrs.asdict(options.data),
        "distill": distill,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(options: PoolOptions, student: StudentSpec, key: str) -> Path:
    """Where a student with this key is cached."""
    return cache_dir(options) / f"{student.name}-{key[:20]}.safetensors"


def save_student(
    module: nn.Module, path: Path, *, key: str, student: StudentSpec, history: list[dict[str, float]]
) -> Path:
    """Write a distilled student (anchor and transformations) atomically."""
    last = history[-1] if history else {}
    meta = {"key": key, "student": attrs.asdict(student), "steps": len(history), "final_losses": last}
    return save_module(module, path, kind=_KIND, metadata=meta)


def load_student(module: nn.Module, path: Path) -> dict[str, str]:
    """Load a cached student into ``module`` (built the same way); returns the header metadata."""
    return load_module_state(module, path, kind=_KIND)
