"""Build output folders: the hidden partial folder, its resume state, and the final swap.

A build of ``out/`` is written into ``.out.partial/`` next to it and renamed
into place only when everything succeeded (:func:`swap`); the previous
output is removed only after the rename, and a crash between the two renames
is finished by :func:`_recover`.  The partial folder's ``build-state.json``
records how far the build got, so ``--resume`` can continue it.
"""

from __future__ import annotations

import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from .distributed import all_gather_objects, dist_info, is_distributed, on_main
from .errors import CheckpointError, OutputExistsError, SpecError, UsageError
from .io import read_json, write_json
from .spec import RESUME_ADJUSTABLE, RESUME_NEUTRAL, EvalSpec, Spec, TrainSpec, spec_hash

__all__ = ["MANIFEST", "partial_dir", "resume_key"]

#: The manifest that marks a folder as a stitchframe build output.
MANIFEST = "build.json"
#: The partial folder's record of how far the build got.
STATE_FILE = "build-state.json"
#: The stages a build records, in order.
STAGES = ("started", "calibrated", "trained")


def partial_dir(output: Path) -> Path:
    """The hidden sibling folder a build of ``output`` is written into."""
    return output.parent / f".{output.name}.partial"


def _old_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.old"


def _recover(output: Path) -> None:
    """Finish a swap a crash interrupted (between the two renames)."""
    old = _old_dir(output)
    if old.exists():
        if output.exists():
            shutil.rmtree(old)
        else:
            old.rename(output)


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse to replace an existing build without ``overwrite`` (or a folder that is not a build)."""
    if not output.exists():
        return
    if not output.is_dir():
        raise OutputExistsError(f"Output {str(output)!r} exists and is not a folder; choose another --output")
    if not any(output.iterdir()):
        return
    if not (output / MANIFEST).is_file():
        raise OutputExistsError(
            f"Output folder {str(output)!r} is not empty and is not a stitchframe build (no {MANIFEST}); "
            "choose another --output"
        )
    if not overwrite:
        raise OutputExistsError(
            f"Output {str(output)!r} already holds a build; pass --overwrite (overwrite=True) to replace it "
            "or choose another --output"
        )


def resume_key(spec: Spec) -> str:
    """A hash of what an unfinished build's spec must share with the spec that resumes it.

    Everything counts except evaluation settings, training bookkeeping
    (``checkpoint_every``, ``log_every``, ``keep_checkpoints``) and the
    settings that may change to rescue a run (``train.lr``, ``stitch_lr``,
    ``grad_clip``, ``amp``: :data:`stitchframe.spec.RESUME_ADJUSTABLE`).
    """
    defaults = TrainSpec()
    neutral = {k: getattr(defaults, k) for k in RESUME_NEUTRAL | RESUME_ADJUSTABLE}
    return spec_hash(attrs.evolve(spec, train=attrs.evolve(spec.train, **neutral), eval=EvalSpec()))


def _read_state(partial: Path) -> dict[str, Any]:
    """The partial build's state file, checked field by field."""
    path = partial / STATE_FILE
    found = read_json(path) if path.is_file() else {}
    if not isinstance(found, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(found).__name__}, expected a JSON object; "
                              "rerun with --overwrite instead of --resume to start over")
    checks = {"stage": lambda v: v in STAGES, "train": lambda v: v is None or isinstance(v, dict),
              "run": lambda v: isinstance(v, str),
              "spec_hash": lambda v: isinstance(v, str), "resume_key": lambda v: isinstance(v, str)}
    for field, ok in checks.items():
        if field in found and not ok(found[field]):
            raise CheckpointError(f"{str(path)!r}: field {field!r} is {found[field]!r}, which is not valid; "
                                  "the file is corrupt, rerun with --overwrite instead of --resume to start over")
    return found


def _holds_work(partial: Path) -> bool:
    """Whether an unfinished build has calibrated weights or checkpoints worth keeping (a corrupt state counts)."""
    try:
        stage = _read_state(partial).get("stage", "started")
    except CheckpointError:
        return True
    ckpt = partial / "checkpoints"
    return stage != "started" or (ckpt / "latest").exists() or any(ckpt.glob("step-*"))


def _open_output(output: Path, spec: Spec, resume: bool, overwrite: bool, console) -> dict[str, Any]:
    """Everything a build does to its output folder before any work (rank 0 alone under ``torchrun``).

    Finishes an interrupted swap, checks the output may be written, and
    creates (or reuses) the partial folder; returns its state.
    """
    _recover(output)
    _check_output(output, overwrite)
    return _prepare_partial(output, spec, resume, overwrite, console)[1]


def _prepare_partial(output: Path, spec: Spec, resume: bool, overwrite: bool,
                    console) -> tuple[Path, dict[str, Any]]:
    """Create (or reuse, when resuming) the partial folder; returns it and its state (``stage``, ``train``).

    An unfinished build that holds work is discarded only with ``overwrite``.
    The state carries a fresh ``run`` token, which lets the other ranks check
    that they see the same folder (:func:`_check_shared`).
    """
    partial = partial_dir(output)
    key = resume_key(spec)
    state: dict[str, Any] = {"spec_hash": spec_hash(spec), "resume_key": key, "stage": "started"}
    if partial.exists() and resume:
        found = _read_state(partial)
        if found.get("resume_key", key) != key:
            raise CheckpointError(
                f"The unfinished build in {str(partial)!r} was made from another spec; only eval, train.lr, "
                "train.stitch_lr, train.grad_clip, train.amp and the checkpoint/log settings may change on resume. "
                "Restore the spec, or rerun with --overwrite instead of --resume to start over"
            )
        state.update(found, spec_hash=spec_hash(spec), resume_key=key)
        if console is not None:
            console.print(f"resuming the unfinished build in {partial} (stage: {state['stage']})")
    elif partial.exists():
        if _holds_work(partial):
            if not overwrite:
                raise OutputExistsError(
                    f"{str(partial)!r} holds an unfinished build of {str(output)!r}; pass --resume (resume=True) "
                    "to continue it, or --overwrite (overwrite=True) to discard it and start over"
                )
            if console is not None:
                console.print(f"discarding the unfinished build in {partial} (--overwrite)")
        shutil.rmtree(partial)
    state["run"] = secrets.token_hex(8)
    (partial / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_json(partial / STATE_FILE, state)
    return partial, state


def _check_shared(partial: Path, state: dict[str, Any]) -> None:
    """Under ``torchrun``: every rank must see the partial folder rank 0 just wrote (a shared file system).

    Every rank reads the ``run`` token of the state file; all ranks learn
    which ones could not, and all raise the same error.  A no-op when not
    distributed.

    Raises:
        UsageError: A rank (on another node, say) cannot see the folder.
    """
    if not is_distributed():
        return
    try:
        seen = read_json(partial / STATE_FILE).get("run") == state["run"]
    except (OSError, CheckpointError, AttributeError):
        seen = False
    views = all_gather_objects((seen, socket.gethostname()))
    blind = [f"{rank} (host {host!r})" for rank, (ok, host) in enumerate(views) if not ok]
    if blind:
        exc = UsageError(
            f"rank(s) {', '.join(blind)} cannot see {str(partial)!r}, which rank 0 (host {views[0][1]!r}) just "
            "wrote: under torchrun the output folder must be on a file system every node shares, at the same "
            "path (NFS, Lustre, ...). Pass --output DIR on such a file system"
        )
        exc.on_rank_zero = dist_info().rank != 0  # every rank knows; rank 0 reports it
        raise exc


@contextmanager
def partial_build(output: Path, spec: Spec, *, resume: bool, overwrite: bool,
                  console) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The partial folder a build writes into, and its state (``stage``, ``train``, ...).

    Rank 0 alone opens it (:func:`_open_output`; under ``torchrun`` the other
    ranks wait for its result or its error), then every rank checks that it
    sees the same folder.  When the build fails, a partial folder that holds
    no work worth resuming is removed; otherwise ``console`` (rank 0's) is
    told that ``--resume`` can continue it.
    """
    state = on_main(lambda: _open_output(output, spec, resume, overwrite, console))
    partial = partial_dir(output)  # this rank's view of it: _check_shared tells whether it is rank 0's folder
    main = dist_info().is_main
    try:
        _check_shared(partial, state)
        yield partial, state
    except BaseException:
        if main and partial.exists() and not _holds_work(partial):
            shutil.rmtree(partial, ignore_errors=True)  # failed before any work worth resuming
        elif console is not None and main and partial.exists():
            console.print(f"build failed; the unfinished build stays in {partial} (rerun with --resume)",
                          style="yellow", markup=False, emoji=False)
        raise


def swap(partial: Path, output: Path) -> None:
    """Move the finished build into place; the previous output is removed only after."""
    (partial / STATE_FILE).unlink(missing_ok=True)
    for stale in [*partial.glob(".*.tmp"), *(partial / "checkpoints").glob(".*.tmp")]:  # writes a crash cut short
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    old = _old_dir(output)
    if output.exists():
        output.rename(old)
    partial.rename(output)
    if old.exists():
        shutil.rmtree(old)


def resolve_output(spec: Spec, output: str | Path | None) -> Path:
    """The output folder: ``output``, else the spec's ``output``, as an absolute path."""
    if output is None:
        output = spec.output
    if output is None:
        raise SpecError("output: no output folder; pass output= (--output DIR) or set output: in the spec")
    return Path(output).expanduser().absolute()


# ---------------------------------------------------------------------------
