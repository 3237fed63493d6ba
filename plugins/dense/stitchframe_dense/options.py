"""Options of what stitchframe-dense registers, apart from the code so that registering imports no torch.

``stitchframe validate`` checks ``task.options`` and ``data.options`` against
these classes without importing torch.
"""

from __future__ import annotations

import attrs

__all__ = ["SegmentationOptions", "ShapesOptions", "FashionMNISTMasksOptions", "FASHION_MNIST_ROOT"]

_v = attrs.validators

#: Where the Debian package ``dataset-fashion-mnist`` installs the idx files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _fractions(_inst, attr, value) -> None:
    if not value or any(not 0 < f <= 1 for f in value) or sorted(set(value)) != list(value):
        raise ValueError(f"'{attr.name}' must be increasing values in (0, 1], got {list(value)!r}")


@attrs.frozen(kw_only=True)
class SegmentationOptions:
    """Options of the ``segmentation`` task."""

    fractions: list[float] = attrs.field(
        factory=lambda: [0.25, 0.5, 0.75, 1.0], validator=_fractions,
        metadata=_help("Depth fractions of the feature levels: level l reads the activation after the route's "
                       "round(f_l * L)-th block, L the blocks the route runs (increasing values in (0, 1])."),
    )
    strides: list[int] = attrs.field(
        factory=lambda: [4, 8, 16, 32], validator=_v.deep_iterable(_v.ge(1)),
        metadata=_help("Output stride of every level relative to the input (one per fraction)."),
    )
    channels: int = attrs.field(
        default=64, validator=_v.ge(1),
        metadata=_help("Channels of every level: each cut point a level reads gets a linear projection to them."),
    )
    head_dim: int = attrs.field(default=64, validator=_v.ge(1), metadata=_help("Width of the FPN-lite head."))

    def __attrs_post_init__(self) -> None:
        if len(self.strides) != len(self.fractions):
            raise ValueError(f"'strides' has {len(self.strides)} values for {len(self.fractions)} fractions; "
                             "give one stride per fraction")


@attrs.frozen(kw_only=True)
class ShapesOptions:
    """Options of ``shapes``."""

    train_size: int = attrs.field(default=2048, validator=_v.ge(1), metadata=_help("Training images."))
    val_size: int = attrs.field(default=256, validator=_v.ge(1), metadata=_help("Validation images."))
    max_shapes: int = attrs.field(default=3, validator=_v.ge(1), metadata=_help("Most shapes per image."))
    noise: float = attrs.field(default=0.05, validator=_v.ge(0.0), metadata=_help("Std of the pixel noise."))
    seed: int = attrs.field(default=0, metadata=_help("Seed (the validation split uses seed + 1)."))


@attrs.frozen(kw_only=True)
class FashionMNISTMasksOptions:
    """Options of ``fashion_mnist_masks``."""

    root: str = attrs.field(
        default=FASHION_MNIST_ROOT,
        metadata=_help("Folder with the four Fashion-MNIST idx .gz files (the Debian package "
                       f"dataset-fashion-mnist installs them in {FASHION_MNIST_ROOT})."),
    )
    threshold: int = attrs.field(
        default=32, validator=[_v.ge(0), _v.le(254)],
        metadata=_help("Pixels brighter than this (0-255, in the 28x28 original) are the garment; the rest is "
                       "background."),
    )
    train_size: int | None = attrs.field(
        default=None, validator=_v.optional(_v.ge(1)),
        metadata=_help("Use a fixed random subset of this many training images (default: all 60000)."),
    )
    val_size: int | None = attrs.field(
        default=None, validator=_v.optional(_v.ge(1)),
        metadata=_help("Use a fixed random subset of this many test images for validation (default: all 10000)."),
    )
    seed: int = attrs.field(default=0, metadata=_help("Seed of the subsets."))
