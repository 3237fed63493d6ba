"""stitchframe: heterogeneous model stitching (Stitchable Neural Networks) as a framework.

The curated public API is re-exported here; everything else may change
without notice.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .anchors import Anchor, Preprocess, anchor_name, count_flops
from .calibration import calibrate, calibrate_heads
from .datasets import DatasetSplits
from .engine import assemble, build_snnet, choose_layer, load_anchor, validate_spec
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
)
from .evaluate import Evaluation, RouteResult, evaluate_routes
from .export import ExportResult, export_route, load_route
from .graph import LAYOUTS, ActivationSpec, BlockGraph, BlockInfo
from .hookspecs import hookimpl, hookspec
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

__all__ = [
    "recalibrate_route_bn",
    "__version__",
    "ActivationSpec",
    "Anchor",
    "BlockGraph",
    "BlockInfo",
    "BuildInterrupted",
    "BuildResult",
    "CheckpointError",
    "Conv1x1Stitch",
    "DEFAULT_PLUGINS",
    "DatasetSplits",
    "Entry",
    "Evaluation",
    "ExportResult",
    "LAYOUTS",
    "LeastSquaresStitch",
    "LinearStitch",
    "Link",
    "LowRankStitch",
    "NoOptions",
    "OutputExistsError",
    "PluginError",
    "PluginManager",
    "Preprocess",
    "ProjectionStitch",
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
    "TrainingError",
    "UnknownNameError",
    "anchor_name",
    "assemble",
    "build",
    "build_snnet",
    "calibrate",
    "calibrate_heads",
    "choose_layer",
    "count_flops",
    "dump_spec",
    "evaluate_build",
    "evaluate_routes",
    "export_route",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_anchor",
    "load_module_state",
    "load_registries",
    "load_route",
    "load_snnet",
    "load_spec",
    "pareto_front",
    "parse_spec",
    "save_module",
    "solve_least_squares",
    "validate_spec",
    "write_report",
]
