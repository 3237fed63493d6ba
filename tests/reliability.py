"""A test plugin for the reliability tests, loaded with ``--plugin tests.reliability:ReliabilityPlugin``.

* dataset ``signal_synthetic`` - the built-in ``synthetic`` images, except that
  the process sends itself a signal when a split's items have been read a given
  number of times.  The trigger comes from the environment, so an interrupted
  build and its ``--resume`` use the very same spec::

      STITCHFRAME_TEST_SIGNAL=SIGTERM@train:37   # the 38th item read from the training split

* stitch space ``empty`` - yields no route at all;
* stitch space ``forced`` - yields one stitched route between the first two
  anchors (block 0 of the first into block 1 of the second) without asking
  whether the stitching layer can bridge it.
"""

from __future__ import annotations

import os
import signal

import attrs
from torch.utils.data import Dataset

import stitchframe
from stitchframe import Route, Segment, StitchSpace
from stitchframe.datasets import SyntheticOptions, load_synthetic

ENV = "STITCHFRAME_TEST_SIGNAL"


def _trigger(split: str) -> tuple[int, int] | None:
    """``(signal number, item count)`` for ``split`` from :data:`ENV`, or ``None``."""
    value = os.environ.get(ENV, "")
    if not value:
        return None
    name, _, where = value.partition("@")
    which, _, count = where.partition(":")
    return (int(getattr(signal, name)), int(count)) if which == split else None


class _Signalling(Dataset):
    """Wraps a split; sends the configured signal to this process on the configured item read."""

    def __init__(self, data: Dataset, split: str) -> None:
        self.data, self.split, self.reads = data, split, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        trigger = _trigger(self.split)
        if trigger is not None and self.reads == trigger[1]:
            os.kill(os.getpid(), trigger[0])
        self.reads += 1
        return self.data[i]


def load_signal_synthetic(options: SyntheticOptions, preprocess) -> stitchframe.DatasetSplits:
    """``synthetic``, with the signal trigger of :data:`ENV` on both splits."""
    splits = load_synthetic(options, preprocess)
    return attrs.evolve(splits, train=_Signalling(splits.train, "train"), val=_Signalling(splits.val, "val"))


class EmptySpace(StitchSpace):
    """Yields nothing."""

    def routes(self, anchors, can_stitch):
        return iter(())


class ForcedSpace(StitchSpace):
    """One stitched route, first anchor's block 0 into the second anchor's block 1, unchecked."""

    def routes(self, anchors, can_stitch):
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
