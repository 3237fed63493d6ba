"""Exception hierarchy.

Every error stitchframe raises for a user mistake derives from
:class:`StitchframeError`, so callers (and the CLI) can tell "you asked for
something wrong" apart from a bug.  Messages follow one pattern: what was
received, where (spec path, plugin and hook, block names) and how to fix it.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator

__all__ = [
    "StitchframeError",
    "SpecError",
    "UnknownNameError",
    "PluginError",
    "ShapeMismatchError",
    "CheckpointError",
    "UsageError",
    "TrainingError",
    "OutputExistsError",
    "BuildInterrupted",
    "did_you_mean",
]


class StitchframeError(Exception):
    """Base class of every error stitchframe reports to users.

    Attributes:
        on_rank_zero: Under ``torchrun``, true on the ranks other than 0 when
            rank 0 raises the same error and reports it (the command prints it
            once, from rank 0).
    """

    on_rank_zero: bool = False


class SpecError(StitchframeError, ValueError):
    """A spec (YAML file or attrs object) is malformed or inconsistent."""


class UnknownNameError(StitchframeError, LookupError):
    """A name (stitch layer, stitch space, anchor prefix, ...) is not registered.

    Derives from :class:`LookupError` rather than :class:`KeyError` because
    ``str(KeyError(msg))`` wraps the message in quotes.
    """


class PluginError(StitchframeError):
    """A plugin failed to import, raised in a hook, or broke the contract."""


class ShapeMismatchError(StitchframeError, ValueError):
    """Two activations cannot be joined (stitch between incompatible specs)."""


class CheckpointError(StitchframeError):
    """A weights file or checkpoint is missing, truncated, corrupt or mismatched."""


class UsageError(StitchframeError, ValueError):
    """A request the user must change that is not in a spec: an impossible budget, a missing optional extra."""


class TrainingError(StitchframeError):
    """Training cannot go on (for example a non-finite loss)."""


class OutputExistsError(StitchframeError, FileExistsError):
    """A build would replace an existing output without ``overwrite=True`` (``--overwrite``)."""


class BuildInterrupted(StitchframeError):
    """A build stopped on SIGINT or SIGTERM; what it finished is kept for ``resume=True`` (``--resume``).

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        exit_code: The command's exit status, ``128 + signal number`` (130, 143) as shells report it.
    """

    def __init__(self, message: str, *, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        import signal

        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


@contextlib.contextmanager
def plugin_call(where: str, markers: tuple[str, ...], failed: str) -> Iterator[None]:
    """Run plugin code: its own errors get ``where: `` in front (see :func:`_prefixed`), and any other
    exception becomes a :class:`PluginError` reading ``"{failed}: {type}: {message}"``."""
    try:
        yield
    except StitchframeError as exc:
        raise _prefixed(exc, where, markers)
    except Exception as exc:
        raise PluginError(f"{failed}: {type(exc).__name__}: {exc}") from exc


def _prefixed(exc: StitchframeError, where: str, markers: tuple[str, ...] = ()) -> StitchframeError:
    """The same kind of error with ``where: `` in front, unless the message names ``where`` (or a marker).

    Used where a plugin's own error must still point at the spec field that
    led to it (``anchors[1] ('tiny:x'): ...``).
    """
    text = str(exc)
    if any(m in text for m in (where, *markers)):
        return exc
    try:
        new = type(exc)(f"{where}: {text}")
    except Exception:  # noqa: BLE001 - a subclass with another signature keeps its message
        return exc
    new.__cause__ = exc
    return new


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``"did you mean 'x'? "`` for the closest choice, or ``""``.

    Args:
        name: What the user wrote.
        choices: The valid names.

    Returns:
        A sentence fragment ending in a space, ready to prefix a list of
        valid values, or the empty string when nothing is close.
    """
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""
