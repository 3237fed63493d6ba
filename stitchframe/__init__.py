"""stitchframe: heterogeneous model stitching (Stitchable Neural Networks) as a framework.

The curated public API is re-exported here; everything else may change
without notice.  Names are imported on first access (PEP 562), so
``import stitchframe`` (and the ``stitchframe`` command's ``--version``,
``--help`` and ``validate``) does not import torch, timm or transformers.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # for type checkers and the docs (griffe); at run time names load on first access
    from .anchors import Anchor, Preprocess, anchor_name, count_flops
    from .calibration import calibrate, calibrate_heads
    from .datasets import DatasetSplits
    from .engine import assemble, build_snnet, choose_layer, load_anchor
    from .errors import (
        BuildInterrupted,
        CheckpointError,
        OutputExistsError,
        PluginError,
        ShapeMismatchError,
        SpecError,
        StitchframeError,
        TrainingError,
        UnknownNameError,
        UsageError,
    )
    from .evaluate import Evaluation, RouteResult, evaluate_routes
    from .export import ExportResult, export_route, load_route
    from .graph import LAYOUTS, ActivationSpec, BlockGraph, BlockInfo
    from .hookspecs import hookimpl, hookspec
    from .hub import hub_offline_mode, hub_reachable
    from .io import load_module_state, save_module
    from .pipeline import BuildResult, build, evaluate_build, load_snnet
    from .plugins import DEFAULT_PLUGINS, PluginManager, Registries, get_plugin_manager, load_registries
    from .registry import Entry, NoOptions, Registry
    from .report import pareto_front, write_report
    from .route_bn import recalibrate_route_bn
    from .routes import Link, Route, RouteTable, Segment
    from .snnet import SNNet, RouteModule
    from .spec import Spec, dump_spec, load_spec, parse_spec
    from .stitch_layers import (
        Conv1x1Stitch,
        LeastSquaresStitch,
        LinearStitch,
        LowRankStitch,
        ProjectionStitch,
        StitchJoin,
        StitchLayer,
        solve_least_squares,
    )
    from .stitch_spaces import SpaceContext, StitchSpace
    from .tasks import ClassificationTask, Task, evaluate_task_routes, load_task_layers, save_task_layers
    from .datasets import FASHION_MNIST_CLASSES, image_transform, read_idx
    from .validation import validate_spec
    from .calibration import batch_inputs
    from .layer_options import ProjectionOptions
    from .objectives import output_logits
    from .registry import AnchorLoader, DatasetLoader, IdentifierCheck, Register
    from .snnet import stitch_key
    from .spec import AnchorSpec, CalibrationSpec, TrainSpec, structure_options
    from .stitch_layers import NormalEquations
    from .stitch_spaces import AnchorsSpace, CanStitch, MakeStitch, by_flops
    from .train import TrainResult
    from .train import train as train_snnet
    from .errors import did_you_mean

#: Public name -> the module (under stitchframe) that defines it, or ``module:attribute`` when the
#: attribute's own name differs (``train_snnet`` is :func:`stitchframe.train.train`).
_LAZY: dict[str, str] = {
    "Anchor": "anchors",
    "Preprocess": "anchors",
    "anchor_name": "anchors",
    "count_flops": "anchors",
    "calibrate": "calibration",
    "calibrate_heads": "calibration",
    "DatasetSplits": "datasets",
    "assemble": "engine",
    "build_snnet": "engine",
    "choose_layer": "engine",
    "load_anchor": "engine",
    "validate_spec": "validation",
    "BuildInterrupted": "errors",
    "CheckpointError": "errors",
    "OutputExistsError": "errors",
    "PluginError": "errors",
    "ShapeMismatchError": "errors",
    "SpecError": "errors",
    "StitchframeError": "errors",
    "TrainingError": "errors",
    "UnknownNameError": "errors",
    "UsageError": "errors",
    "Evaluation": "evaluate",
    "RouteResult": "evaluate",
    "evaluate_routes": "evaluate",
    "ExportResult": "export",
    "export_route": "export",
    "load_route": "export",
    "LAYOUTS": "graph",
    "ActivationSpec": "graph",
    "BlockGraph": "graph",
    "BlockInfo": "graph",
    "hookimpl": "hookspecs",
    "hookspec": "hookspecs",
    "hub_offline_mode": "hub",
    "hub_reachable": "hub",
    "load_module_state": "io",
    "save_module": "io",
    "BuildResult": "pipeline",
    "build": "pipeline",
    "evaluate_build": "pipeline",
    "load_snnet": "pipeline",
    "DEFAULT_PLUGINS": "plugins",
    "PluginManager": "plugins",
    "Registries": "plugins",
    "get_plugin_manager": "plugins",
    "load_registries": "plugins",
    "Entry": "registry",
    "NoOptions": "registry",
    "Registry": "registry",
    "pareto_front": "report",
    "write_report": "report",
    "recalibrate_route_bn": "route_bn",
    "Link": "routes",
    "Route": "routes",
    "RouteTable": "routes",
    "Segment": "routes",
    "SNNet": "snnet",
    "RouteModule": "snnet",
    "Spec": "spec",
    "dump_spec": "spec",
    "load_spec": "spec",
    "parse_spec": "spec",
    "Conv1x1Stitch": "stitch_layers",
    "LeastSquaresStitch": "stitch_layers",
    "LinearStitch": "stitch_layers",
    "LowRankStitch": "stitch_layers",
    "ProjectionStitch": "stitch_layers",
    "StitchJoin": "stitch_layers",
    "StitchLayer": "stitch_layers",
    "solve_least_squares": "stitch_layers",
    "SpaceContext": "stitch_spaces",
    "StitchSpace": "stitch_spaces",
    "AnchorSpec": "spec",
    "TrainSpec": "spec",
    "CalibrationSpec": "spec",
    "structure_options": "spec",
    "stitch_key": "snnet",
    "batch_inputs": "calibration",
    "AnchorsSpace": "stitch_spaces",
    "CanStitch": "stitch_spaces",
    "MakeStitch": "stitch_spaces",
    "by_flops": "stitch_spaces",
    "output_logits": "objectives",
    "did_you_mean": "errors",
    "ProjectionOptions": "layer_options",
    "NormalEquations": "stitch_layers",
    "train_snnet": "train:train",
    "TrainResult": "train",
    "Register": "registry",
    "AnchorLoader": "registry",
    "DatasetLoader": "registry",
    "IdentifierCheck": "registry",
    "ClassificationTask": "tasks",
    "Task": "tasks",
    "evaluate_task_routes": "tasks",
    "load_task_layers": "tasks",
    "save_task_layers": "tasks",
    "FASHION_MNIST_CLASSES": "datasets",
    "image_transform": "datasets",
    "read_idx": "datasets",
}

__all__ = [
    "__version__",
    "ActivationSpec",
    "Anchor",
    "AnchorLoader",
    "AnchorSpec",
    "AnchorsSpace",
    "BlockGraph",
    "BlockInfo",
    "BuildInterrupted",
    "BuildResult",
    "CalibrationSpec",
    "CanStitch",
    "CheckpointError",
    "ClassificationTask",
    "Conv1x1Stitch",
    "DEFAULT_PLUGINS",
    "DatasetLoader",
    "DatasetSplits",
    "Entry",
    "Evaluation",
    "ExportResult",
    "FASHION_MNIST_CLASSES",
    "IdentifierCheck",
    "LAYOUTS",
    "LeastSquaresStitch",
    "LinearStitch",
    "Link",
    "LowRankStitch",
    "MakeStitch",
    "NoOptions",
    "NormalEquations",
    "OutputExistsError",
    "PluginError",
    "PluginManager",
    "Preprocess",
    "ProjectionOptions",
    "ProjectionStitch",
    "Register",
    "Registries",
    "Registry",
    "Route",
    "RouteModule",
    "RouteResult",
    "RouteTable",
    "SNNet",
    "Segment",
    "ShapeMismatchError",
    "SpaceContext",
    "Spec",
    "SpecError",
    "StitchJoin",
    "StitchLayer",
    "StitchSpace",
    "StitchframeError",
    "Task",
    "TrainResult",
    "TrainSpec",
    "TrainingError",
    "UnknownNameError",
    "UsageError",
    "anchor_name",
    "assemble",
    "batch_inputs",
    "build",
    "build_snnet",
    "by_flops",
    "calibrate",
    "calibrate_heads",
    "choose_layer",
    "count_flops",
    "did_you_mean",
    "dump_spec",
    "evaluate_build",
    "evaluate_routes",
    "evaluate_task_routes",
    "export_route",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "hub_offline_mode",
    "hub_reachable",
    "image_transform",
    "load_anchor",
    "load_module_state",
    "load_registries",
    "load_route",
    "load_snnet",
    "load_spec",
    "load_task_layers",
    "output_logits",
    "pareto_front",
    "parse_spec",
    "read_idx",
    "recalibrate_route_bn",
    "save_module",
    "save_task_layers",
    "solve_least_squares",
    "stitch_key",
    "structure_options",
    "train_snnet",
    "validate_spec",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access and cache it in this module."""
    module = _LAZY.get(name)
    if module is None:
        if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)  # a submodule: stitchframe.pipeline, ...
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = module.partition(":")
    value = getattr(importlib.import_module(f".{module}", __name__), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
