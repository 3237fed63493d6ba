"""A test plugin for the reliability tests, loaded with ``--plugin tests.reliability:ReliabilityPlugin``.

* dataset ``signal_synthetic`` - the built-in ``synthetic`` images, except that
  the process sends itself a signal when a split's items have been read a given
  number of times.  The trigger comes from the environment, so an interrupted
  build and its ``--resume`` use the very same spec::

      STITCHFRAME_TEST_SIGNAL=SIGTERM@train:37   # the 38th item read from the training split

  ``NAN`` instead of a signal name makes that item's image all NaN;
* ``STITCHFRAME_TEST_KILL_WRITE=N`` - the process SIGKILLs itself during its
  Nth atomic write into a ``checkpoints`` folder, after the temporary file
  holds half the data and before it is renamed (a crash mid-write);
* stitch space ``empty`` - yields no route at all;
* stitch space ``forced`` - yields one stitched route between the first two
  anchors (block 0 of the first into block 1 of the second) without asking
  whether the stitching layer can bridge it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import attrs
import torch
from torch.utils.data import Dataset

import stitchframe
from stitchframe import Route, Segment, StitchSpace
from stitchframe.datasets import SyntheticOptions, load_synthetic

ENV = "STITCHFRAME_TEST_SIGNAL"
KILL_WRITE_ENV = "STITCHFRAME_TEST_KILL_WRITE"


def _trigger(split: str) -> tuple[str, int] | None:
    """``(signal name or 'NAN', item count)`` for ``split`` from :data:`ENV`, or ``None``."""
    value = os.environ.get(ENV, "")
    if not value:
        return None
    name, _, where = value.partition("@")
    which, _, count = where.partition(":")
    return (name, int(count)) if which == split else None


class _Signalling(Dataset):
    """Wraps a split; sends the configured signal to this process on the configured item read."""

    def __init__(self, data: Dataset, split: str) -> None:
        self.data, self.split, self.reads = data, split, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        trigger = _trigger(self.split)
        hit = trigger is not None and self.reads == trigger[1]
        self.reads += 1
        if hit and trigger[0] == "NAN":
            image, label = self.data[i]
            return torch.full_like(image, float("nan")), label
        if hit:
            os.kill(os.getpid(), int(getattr(signal, trigger[0])))
        return self.data[i]


def load_signal_synthetic(options: SyntheticOptions, preprocess) -> stitchframe.DatasetSplits:
    """``synthetic``, with the signal trigger of :data:`ENV` on both splits."""
    splits = load_synthetic(options, preprocess)
    return attrs.evolve(splits, train=_Signalling(splits.train, "train"), val=_Signalling(splits.val, "val"))


class EmptySpace(StitchSpace):
    """Yields nothing."""

    def routes(self, anchors, can_stitch, context=None):
        return iter(())


class ForcedSpace(StitchSpace):
    """One stitched route, first anchor's block 0 into the second anchor's block 1, unchecked."""

    def routes(self, anchors, can_stitch, context=None):
        a, b = anchors[0], anchors[1]
        yield Route([Segment(a.name, 0, 1), Segment(b.name, 1, b.depth)])


class ReliabilityPlugin:
    """Registers ``signal_synthetic``, ``empty`` and ``forced``."""

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_datasets(register):
        register("signal_synthetic", load_signal_synthetic, options=SyntheticOptions)

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_spaces(register):
        register("empty", EmptySpace)
        register("forced", ForcedSpace)


# ---------------------------------------------------------------------------
# a crash in the middle of a checkpoint write
# ---------------------------------------------------------------------------
def _kill_during_checkpoint_writes(nth: int) -> None:
    """Wrap :func:`stitchframe.io.atomic_write` so its ``nth`` write into ``checkpoints/`` dies half-way."""
    import stitchframe.checkpoint
    import stitchframe.io

    original = stitchframe.io.atomic_write
    count = [0]

    def atomic_write(path, write):
        if "checkpoints" not in Path(path).parts:
            return original(path, write)
        count[0] += 1
        if count[0] != nth:
            return original(path, write)

        def half_then_die(tmp: str) -> None:
            write(tmp)
            size = os.path.getsize(tmp)
            with open(tmp, "rb+") as fh:
                fh.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        return original(path, half_then_die)

    stitchframe.io.atomic_write = atomic_write
    stitchframe.checkpoint.atomic_write = atomic_write


if os.environ.get(KILL_WRITE_ENV):
    _kill_during_checkpoint_writes(int(os.environ[KILL_WRITE_ENV]))


# ---------------------------------------------------------------------------
# faulty plugins (each loaded with --plugin tests.reliability:<Name>)
# ---------------------------------------------------------------------------
class RaisingPlugin:
    """Raises in its registration hook."""

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_spaces(register):
        raise RuntimeError("this plugin is broken on purpose")


class DuplicatePlugin:
    """Registers a name the built-ins own (``linear``)."""

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_layers(register):
        register("linear", stitchframe.LinearStitch)


class WrongTypePlugin:
    """Registers an instance where a stitch-space class belongs, and an adapter returning a string."""

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_spaces(register):
        register("not_a_space", EmptySpace())

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("wrongtype", lambda identifier, options, registries, *, structure_only=False: f"model {identifier}")
