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

import stitchframe

from .adapter import FAMILIES, create_model, family_of, load_timm_anchor, preprocess_of, timm_anchor
from .options import TimmOptions
from .weights import load_weights, match_state_dict, read_state_dict, resolve_weights

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
    register("timm", load_timm_anchor, options=TimmOptions)
