"""stitchframe-timm: timm models as stitchframe anchors.

Registers the ``timm`` anchor adapter through the
``stitchframe_register_anchor_adapters`` hook, so a spec can name
``timm:deit_small_patch16_224``, ``timm:swin_tiny_patch4_window7_224``,
``timm:resnet50``, ``timm:tf_efficientnet_lite0`` or
``timm:hf-hub:<org>/<name>``.  Options: :class:`TimmOptions`.

Supported families (one module each): vision transformers and DeiT
(:mod:`.vit`), Swin (:mod:`.swin`), ResNet (:mod:`.resnet`) and
EfficientNet (:mod:`.efficientnet`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import stitchframe

from .options import TimmOptions

if TYPE_CHECKING:
    from .adapter import FAMILIES, create_model, family_of, load_timm_anchor, preprocess_of, timm_anchor
    from .weights import load_weights, match_state_dict, read_state_dict, resolve_weights

# timm and torch load on first use (PEP 562): registering the plugin and validating specs import neither
_LAZY = {
    **dict.fromkeys(("FAMILIES", "create_model", "family_of", "load_timm_anchor", "preprocess_of", "timm_anchor"),
                    "adapter"),
    **dict.fromkeys(("load_weights", "match_state_dict", "read_state_dict", "resolve_weights"), "weights"),
}

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "TimmOptions",
    "__version__",
    "create_model",
    "family_of",
    "load_timm_anchor",
    "load_weights",
    "match_state_dict",
    "preprocess_of",
    "read_state_dict",
    "resolve_weights",
    "stitchframe_register_anchor_adapters",
    "timm_anchor",
]


@stitchframe.hookimpl
def stitchframe_register_anchor_adapters(register) -> None:
    """Register the ``timm`` source prefix."""
    register("timm", "stitchframe_timm.adapter:load_timm_anchor", options=TimmOptions,
             check_identifier="stitchframe_timm.names:check_timm_identifier")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
