"""stitchframe plugin: torchvision MobileNetV3 anchors, the ``dwconv`` stitch and the ``stagewise`` space.

Installed, it is found through the ``stitchframe`` entry-point group under the
name ``torchvision`` (see ``pyproject.toml``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import stitchframe

from .options import MODELS, DWConvOptions, MobileNetOptions, check_mobilenet_name
from .stagewise import StagewiseOptions, StagewiseSpace

if TYPE_CHECKING:
    from .dwconv import DWConvStitch
    from .mobilenet import MobileNetHead, build_model, load_mobilenet, mobilenet_anchor

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
    "check_mobilenet_name",
    "load_mobilenet",
    "mobilenet_anchor",
]


# --8<-- [start:adapter_hook]
@stitchframe.hookimpl
def stitchframe_register_anchor_adapters(register):
    """Own the ``torchvision:`` source prefix."""
    register("torchvision", "stitchframe_torchvision.mobilenet:load_mobilenet", options=MobileNetOptions,
             check_identifier="stitchframe_torchvision.options:check_mobilenet_name")
# --8<-- [end:adapter_hook]


# --8<-- [start:layer_hook]
@stitchframe.hookimpl
def stitchframe_register_stitch_layers(register):
    """Add the ``dwconv`` stitching layer."""
    register("dwconv", "stitchframe_torchvision.dwconv:DWConvStitch", options=DWConvOptions)
# --8<-- [end:layer_hook]


# --8<-- [start:space_hook]
@stitchframe.hookimpl
def stitchframe_register_stitch_spaces(register):
    """Add the ``stagewise`` stitch space."""
    register("stagewise", StagewiseSpace)
# --8<-- [end:space_hook]


# --8<-- [start:lazy]
# torch and torchvision load on first use (PEP 562): `stitchframe plugins` and `validate` import neither
_LAZY = {"DWConvStitch": "dwconv", **dict.fromkeys(
    ("MobileNetHead", "build_model", "load_mobilenet", "mobilenet_anchor"), "mobilenet")}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
# --8<-- [end:lazy]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
