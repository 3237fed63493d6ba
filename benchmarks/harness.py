"""Shared machinery of the benchmarks: timing, statistics, memory, results.

Every speed figure is a *ratio* of two variants measured side by side in one
run: the variants are interleaved in a fresh random order every round, so
slow drifts of a shared machine hit both alike, and each round gives one
ratio.  Reports give the median ratio and its spread (quartiles, min, max).
Absolute times are reported only on CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import itertools
import json
import os
import platform
import random
import re
import statistics
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

import stitchframe
from stitchframe.io import write_json

__all__ = [
    "Context",
    "Goal",
    "describe_anchors",
    "code_version",
    "environment",
    "fix_malloc_threshold",
    "fmt_ratio",
    "interleave",
    "md_table",
    "median_ci",
    "num_threads",
    "peak_memory",
    "python_allocations",
    "ratios",
    "summarize",
    "sync",
    "write_result",
]


@attrs.define
class Context:
    """What every benchmark receives.

    Attributes:
        device: Where to run.
        preset: ``"quick"``, ``"full"`` or ``"smoke"`` (tests).
        registries: Plugin registries (``None``: all installed plugins).
        seed: Seed of data, weights and interleaving orders.
        log: Progress printer.
        work_dir: Scratch folder (checkpoints of training runs).
        resume: Benchmarks made of separate builds (``elastic``) keep each
            finished build's result in ``work_dir`` and, when this is set,
            reuse those measured with the same code (:func:`code_version`) and
            spec instead of building them again (an interrupted run goes on).
    """

    device: torch.device
    preset: str = "quick"
    registries: Any = None
    seed: int = 0
    log: Callable[[str], None] = print
    work_dir: Path = Path("runs/benchmarks")
    resume: bool = False

    def regs(self) -> stitchframe.Registries:
        """The registries, loaded on first use."""
        if self.registries is None:
            self.registries = stitchframe.load_registries()
        return self.registries

    @property
    def cuda(self) -> bool:
        """True on a CUDA device (absolute times are reported only there)."""
        return self.device.type == "cuda"


@attrs.frozen(kw_only=True)
class Goal:
    """A target a benchmark checks, with what was measured."""

    name: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run (skipped)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# ---------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
            cwd=Path(__file__).resolve().parent,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def code_version() -> str | None:
    """The commit, with a digest of uncommitted changes to tracked files if there are any (``None`` outside git).

    What ``--resume`` compares: a build measured with other code is not reused.  Changes under
    ``benchmarks/results`` and ``docs`` do not count (the benchmarks run before ``elastic`` rewrite
    their results).
    """
    commit = _git_commit()
    if commit is None:
        return None
    with contextlib.suppress(Exception):
        diff = subprocess.run(["git", "diff", "HEAD", "--", ".", ":(exclude)benchmarks/results", ":(exclude)docs"],
                              capture_output=True, timeout=30, check=True,
                              cwd=Path(__file__).resolve().parent.parent).stdout
        if diff:
            return f"{commit}+{hashlib.sha256(diff).hexdigest()[:12]}"
        return commit
    return None


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software a result was measured on."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stitchframe": stitchframe.__version__,
        "git_commit": _git_commit(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(ImportError):
        import timm

        env["timm"] = timm.__version__
    return env


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA) before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    variants: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int = 1,
    device: torch.device | None = None,
    seed: int = 0,
    inner: int = 1,
) -> dict[str, list[float]]:
    """Time every variant once per round, in a fresh random order each round.

    Args:
        variants: Name -> a call to time.
        rounds: Timed rounds.
        warmup: Untimed rounds first.
        device: Synchronised around each timed call.
        seed: Seed of the orders.
        inner: Calls per timing (for very short calls); times are per call.

    Returns:
        Seconds per call, by variant, one entry per round (round ``i`` of every
        variant was measured in the same round).
    """
    device = device if device is not None else torch.device("cpu")
    rng = random.Random(seed)
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            fn = variants[name]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) / inner)
    return times


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min, max and count."""
    v = sorted(values)
    if not v:
        return {"n": 0}
    if len(v) >= 2:
        q = statistics.quantiles(v, n=4, method="inclusive")
        q25, q75 = q[0], q[2]
    else:
        q25 = q75 = v[0]
    return {"median": statistics.median(v), "q25": q25, "q75": q75, "min": v[0], "max": v[-1], "n": len(v)}


def median_ci(values: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of the median."""
    rng = random.Random(seed)
    v = list(values)
    meds = sorted(statistics.median(rng.choices(v, k=len(v))) for _ in range(resamples))
    lo = meds[int((1 - level) / 2 * resamples)]
    hi = meds[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def ratios(times: Mapping[str, Sequence[float]], num: str, den: str) -> dict[str, float]:
    """Per-round ratios ``num / den``, summarised."""
    return summarize([a / b for a, b in zip(times[num], times[den])])


def fmt_ratio(s: Mapping[str, float]) -> str:
    """``1.003x [0.998-1.010]`` (median [quartiles])."""
    if not s.get("n"):
        return "n/a"
    return f"{s['median']:.3f}x [{s['q25']:.3f}-{s['q75']:.3f}]"


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (``None``: leave as is)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    with contextlib.suppress(OSError):
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        if m:
            return int(m.group(1))
    return None


def _trim() -> None:
    # young generations only: tensors go with their last reference, and a full
    # collection of a process that imported timm takes most of a second
    gc.collect(1)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_MALLOC_FIXED: list[bool] = []


def fix_malloc_threshold() -> bool:
    """Make glibc serve every allocation over 128 KiB with its own ``mmap``.

    By default glibc raises that threshold as large blocks are freed and then
    keeps freed tensors on its heap, so the resident set keeps growing with
    fragmentation although live memory does not.  With the threshold fixed,
    a freed tensor goes back to the OS and peak RSS measures live memory.
    It stays fixed for the rest of the process (memory benchmarks run last).
    """
    if not _MALLOC_FIXED:
        ok = False
        with contextlib.suppress(OSError, AttributeError):
            ok = bool(ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD
        _MALLOC_FIXED.append(ok)
    return _MALLOC_FIXED[0]


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Measure the peak memory a block adds above what was resident when it began.

    On CUDA: ``torch.cuda.max_memory_allocated`` (exact, tensors only).  On
    CPU: the process's peak resident set (``VmHWM``, reset at entry through
    ``/proc/self/clear_refs``) minus the resident set at entry, which covers
    torch's CPU allocations that ``tracemalloc`` cannot see.  The yielded
    dict gets ``peak_bytes``, ``method`` and ``resident_after_bytes`` (the
    resident growth still held after the block).
    """
    out: dict[str, Any] = {}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        sync(device)
        out.update(
            peak_bytes=torch.cuda.max_memory_allocated(device) - base,
            resident_after_bytes=torch.cuda.memory_allocated(device) - base,
            method="torch.cuda.max_memory_allocated",
        )
        return
    fixed = fix_malloc_threshold()
    _trim()
    base = _status_kib("VmRSS")
    ok = _reset_hwm() and base is not None
    yield out
    if ok:
        peak = _status_kib("VmHWM")
        method = "VmHWM - VmRSS (/proc/self/status)" + (", mmap threshold fixed at 128 KiB" if fixed else "")
        out.update(peak_bytes=(peak - base) * 1024, method=method)
    else:
        out.update(peak_bytes=None, method="unavailable (no /proc/self/clear_refs)")
    after = _status_kib("VmRSS")
    out["resident_after_bytes"] = None if (after is None or base is None) else (after - base) * 1024


def python_allocations(fn: Callable[[], Any], calls: int) -> dict[str, int]:
    """Python-heap allocations of ``calls`` calls of ``fn``, with :mod:`tracemalloc`.

    The loop itself allocates nothing (``itertools.repeat``) and the garbage
    collector is paused, so an empty ``fn`` reads 0 and 0.

    Returns:
        ``calls``, ``net_bytes`` (still held afterwards) and ``peak_bytes``
        (the most held at any moment, above the start).
    """
    for _ in range(100):  # caches and the interpreter's specialisation settle first; not counted
        fn()
    gc.disable()
    tracemalloc.start()
    try:
        loop = itertools.repeat(None, calls)
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in loop:
            fn()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    return {"calls": calls, "net_bytes": now - start, "peak_bytes": peak - start}


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------
def describe_anchors(anchors: Sequence[Mapping[str, Any]]) -> str:
    """``timm:deit_tiny_patch16_224, timm:deit_small_patch16_224 at 32 px`` from anchor entries."""
    sizes = {(a.get("options") or {}).get("img_size") for a in anchors}
    names = ", ".join(f"`{a['source']}`" for a in anchors)
    return names + (f" at {sizes.pop()} px" if len(sizes) == 1 and None not in sizes else "")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def goals_md(goals: Sequence[Mapping[str, Any]]) -> str:
    """The goals of a result as a markdown table."""
    mark = {True: "met", False: "**missed**", None: "not measured"}
    return md_table(
        ["goal", "target", "measured", "status"],
        [[g["name"], g["target"], g["measured"], mark[g["met"]] + (f" ({g['note']})" if g.get("note") else "")]
         for g in goals],
    )


def write_result(out_dir: Path, name: str, result: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_json(out_dir / f"{name}.json", result)
    md_path = out_dir / f"{name}.md"
    md_path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return json_path, md_path


def read_result(path: Path) -> dict[str, Any]:
    """Read a result JSON."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
