"""The hooks of the built-in plugins whose objects need torch, without importing torch.

The built-in plugins ``stitchframe.stitch_layers``, ``stitchframe.datasets`` and ``stitchframe.tasks``
(names as listed by ``stitchframe plugins``) register their objects as lazy
references (``"stitchframe.stitch_layers:LinearStitch"``) with options
classes from torch-free modules, exactly as a third-party plugin can: listing
plugins and ``stitchframe validate`` then never import torch, and the first
build that uses an object imports it.
"""

from __future__ import annotations

from .dataset_options import DigitsOptions, FashionMNISTOptions, ImageFolderOptions, SyntheticOptions
from .hookspecs import hookimpl
from .layer_options import LowRankOptions, ProjectionOptions
from .registry import NoOptions

__all__ = ["StitchLayerHooks", "DatasetHooks", "TaskHooks"]


class StitchLayerHooks:
    """The ``stitchframe.stitch_layers`` plugin: ``linear``, ``conv1x1``, ``lowrank``."""

    @staticmethod
    @hookimpl
    def stitchframe_register_stitch_layers(register) -> None:
        """Register the built-in stitching layers."""
        register("linear", "stitchframe.stitch_layers:LinearStitch", options=ProjectionOptions)
        register("conv1x1", "stitchframe.stitch_layers:Conv1x1Stitch", options=ProjectionOptions)
        register("lowrank", "stitchframe.stitch_layers:LowRankStitch", options=LowRankOptions)


class DatasetHooks:
    """The ``stitchframe.datasets`` plugin: ``fashion_mnist``, ``digits``, ``imagefolder``, ``synthetic``."""

    @staticmethod
    @hookimpl
    def stitchframe_register_datasets(register) -> None:
        """Register the built-in datasets."""
        register("fashion_mnist", "stitchframe.datasets:load_fashion_mnist", options=FashionMNISTOptions)
        register("digits", "stitchframe.datasets:load_digits", options=DigitsOptions)
        register("imagefolder", "stitchframe.datasets:load_imagefolder", options=ImageFolderOptions)
        register("synthetic", "stitchframe.datasets:load_synthetic", options=SyntheticOptions)


class TaskHooks:
    """The ``stitchframe.tasks`` plugin: ``classification``."""

    @staticmethod
    @hookimpl
    def stitchframe_register_tasks(register) -> None:
        """Register the built-in task."""
        register("classification", "stitchframe.tasks:ClassificationTask", options=NoOptions)
