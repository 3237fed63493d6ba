"""Options of the built-in datasets, apart from their loaders so that reading them imports no torch.

``stitchframe validate`` checks ``data.options`` against these classes
without importing :mod:`stitchframe.datasets`.
"""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["FASHION_MNIST_ROOT", "FashionMNISTOptions", "DigitsOptions", "ImageFolderOptions", "SyntheticOptions"]

_v = attrs.validators

#: Where the Debian package ``dataset-fashion-mnist`` installs the idx files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class FashionMNISTOptions:
    """Options of ``fashion_mnist``."""

    root: str = attrs.field(
        default=FASHION_MNIST_ROOT,
        metadata=_help("Folder with the four idx .gz files (the Debian package dataset-fashion-mnist installs them "
                       f"in {FASHION_MNIST_ROOT})."),
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
    augment: bool = attrs.field(default=False, metadata=_help("Random-resized crops and flips while training."))
    fallback: Literal["digits"] | None = attrs.field(
        default=None, validator=_v.optional(_v.in_(("digits",))),
        metadata=_help("When the files are missing, load this dataset instead (with a warning) rather than fail; "
                       "'digits' uses scikit-learn's digits with default options."),
    )


@attrs.frozen(kw_only=True)
class DigitsOptions:
    """Options of ``digits``."""

    val_fraction: float = attrs.field(
        default=0.2, validator=[_v.gt(0.0), _v.lt(1.0)], metadata=_help("Fraction of the 1797 images held out.")
    )
    seed: int = attrs.field(default=0, metadata=_help("Seed of the deterministic train/val split."))
    augment: bool = attrs.field(default=False, metadata=_help("Random-resized crops and flips while training."))


@attrs.frozen(kw_only=True)
class ImageFolderOptions:
    """Options of ``imagefolder``."""

    root: str = attrs.field(
        metadata=_help("Dataset root holding one folder per split, each with one folder per class.")
    )
    train_dir: str = attrs.field(default="train", metadata=_help("Training split folder under root."))
    val_dir: str = attrs.field(default="val", metadata=_help("Validation split folder under root."))
    train_size: int | None = attrs.field(
        default=None, validator=_v.optional(_v.ge(1)), metadata=_help("Use a fixed random subset of training images.")
    )
    val_size: int | None = attrs.field(
        default=None, validator=_v.optional(_v.ge(1)), metadata=_help("Use a fixed random subset of validation images.")
    )
    seed: int = attrs.field(default=0, metadata=_help("Seed of the subsets."))
    augment: bool = attrs.field(default=True, metadata=_help("Random-resized crops and flips while training."))


@attrs.frozen(kw_only=True)
class SyntheticOptions:
    """Options of ``synthetic``."""

    num_classes: int = attrs.field(default=10, validator=_v.ge(2), metadata=_help("Number of classes."))
    train_size: int = attrs.field(default=512, validator=_v.ge(1), metadata=_help("Training images."))
    val_size: int = attrs.field(default=256, validator=_v.ge(1), metadata=_help("Validation images."))
    noise: float = attrs.field(
        default=0.35, validator=_v.ge(0.0), metadata=_help("Std of the per-image noise added to the class pattern.")
    )
    seed: int = attrs.field(default=0, metadata=_help("Seed of the class patterns and the noise."))
