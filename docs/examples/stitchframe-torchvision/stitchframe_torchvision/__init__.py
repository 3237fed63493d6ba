"""stitchframe plugin: torchvision MobileNetV3 anchors, the ``dwconv`` stitch and the ``stagewise`` space.

Installed, it is found through the ``stitchframe`` entry-point group under the
name ``torchvision`` (see ``pyproject.toml``).
"""

from __future__ import annotations

import stitchframe

from .dwconv import DWConvOptions, DWConvStitch
from .mobilenet import MODELS, MobileNetHead, MobileNetOptions, build_model, load_mobilenet, mobilenet_anchor
from .stagewise import StagewiseOptions, StagewiseSpace

__version__ = "0.1.0"

__all__ = [
    "DWConvOptions",
    "DWConvStitch",
    "MODELS",
    "MobileNetHead",
    "MobileNetOptions",
    "StagewiseOptions",
    "StagewiseSpace",
    "build_model",
    "load_mobilenet",
    "mobilenet_anchor",
]


# --8<-- [start:adapter_hook]
@stitchframe.hookimpl
def stitchframe_register_anchor_adapters(register):
    """Own the ``torchvision:`` source prefix."""
    register("torchvision", load_mobilenet, options=MobileNetOptions)
# --8<-- [end:adapter_hook]


# --8<-- [start:layer_hook]
@stitchframe.hookimpl
def stitchframe_register_stitch_layers(register):
    """Add the ``dwconv`` stitching layer."""
    register("dwconv", DWConvStitch)
# --8<-- [end:layer_hook]


# --8<-- [start:space_hook]
@stitchframe.hookimpl
def stitchframe_register_stitch_spaces(register):
    """Add the ``stagewise`` stitch space."""
    register("stagewise", StagewiseSpace)
# --8<-- [end:space_hook]
