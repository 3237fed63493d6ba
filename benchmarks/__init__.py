"""stitchframe's benchmarks: speed, memory and elastic accuracy.

Run them with ``python -m benchmarks run [--quick] [--only NAME ...] [--out DIR]``;
see ``docs/benchmarks.md``.  Each benchmark is a module with ``NAME``,
``TITLE``, a ``Params`` class, ``presets()`` (``quick`` and ``full``),
``run(params, ctx) -> dict`` and ``markdown(result) -> str``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["BENCHMARKS", "load"]

#: Benchmark names in running order (module names in this package).
#: The memory benchmarks come after the timing ones: they fix glibc's mmap threshold
#: for the rest of the process (see ``harness.fix_malloc_threshold``).
BENCHMARKS = ("forward", "switching", "evaluation", "training", "layout", "calibration", "memory", "zeroshot",
              "elastic", "startup")


def load(name: str) -> ModuleType:
    """The module of benchmark ``name``."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"{__name__}.{name}")
