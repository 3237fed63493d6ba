"""Options of the adapter and the stitching layer, in a module that imports neither torch nor torchvision.

The package registers its objects as lazy references with these classes, so
``stitchframe plugins`` and ``stitchframe validate`` never import torchvision.
"""

from __future__ import annotations

import attrs

import stitchframe

# --8<-- [start:models]
#: Models this adapter cuts; the source is ``torchvision:<name>``.
MODELS = ("mobilenet_v3_small", "mobilenet_v3_large")


def check_mobilenet_name(identifier: str, options: MobileNetOptions) -> None:
    """The adapter's identifier check, run by ``stitchframe validate`` (no torchvision import, no model built)."""
    if identifier not in MODELS:
        raise stitchframe.UnknownNameError(
            f"torchvision adapter: unknown model {identifier!r}; supported: {', '.join(MODELS)}"
        )
# --8<-- [end:models]


# --8<-- [start:mobilenet]
@attrs.frozen(kw_only=True)
class MobileNetOptions:
    """Options of the ``torchvision`` adapter (``anchors[i].options`` in a spec)."""

    weights: str | None = attrs.field(
        default=None,
        metadata={
            "help": "torchvision weights name (DEFAULT, IMAGENET1K_V1), downloaded by torchvision on first "
            "use; null: random initialisation."
        },
    )
    num_classes: int = attrs.field(
        default=1000, validator=attrs.validators.ge(1), metadata={"help": "Classifier outputs (1000 with weights)."}
    )
    img_size: int = attrs.field(
        default=224,
        validator=attrs.validators.ge(32),
        metadata={"help": "Side of the square input; shapes and FLOPs are traced at this size."},
    )
    width_mult: float = attrs.field(
        default=1.0, validator=attrs.validators.gt(0), metadata={"help": "Channel multiplier (random weights only)."}
    )
# --8<-- [end:mobilenet]


# --8<-- [start:dwconv]
@attrs.frozen(kw_only=True)
class DWConvOptions:
    """Options of the ``dwconv`` stitch (``stitch.layer_options`` in a spec)."""

    kernel_size: int = attrs.field(
        default=3,
        validator=attrs.validators.ge(1),
        metadata={"help": "Side of the depthwise kernel (odd, so the grid keeps its size)."},
    )

    @kernel_size.validator
    def _odd(self, attribute, value):
        if value % 2 == 0:
            raise ValueError(f"'kernel_size' must be odd, got {value}")
# --8<-- [end:dwconv]
