"""Segmentation data: synthetic shapes, and Fashion-MNIST garments with masks derived from their pixels.

:class:`ShapesSegmentation` - every image has a smooth random background and
one to ``max_shapes`` shapes of random size, position and colour (colour says
nothing about the class, so a model has to read the shape); later shapes
occlude earlier ones.  The mask has class ``0`` for the background, ``1``
disc, ``2`` square, ``3`` triangle.  Item ``i`` is a function of
``(seed, i)`` only: nothing is stored or downloaded, and every access gives the
same tensors.

:class:`FashionMNISTMasks` - the real Fashion-MNIST images (28x28 grayscale
garments on a black background), each with a mask derived from its own
pixels: pixels brighter than a threshold are the garment and get its class
(``1 + label``), the rest is background (``0``); 11 classes in all.  A model
has to find the garment and tell which one it is, pixel by pixel.

The dataset loaders :func:`load_shapes` and :func:`load_fashion_mnist_masks`
are registered as ``shapes`` and ``fashion_mnist_masks`` for specs
(``data.name``); images are resized to the anchors' input size and
normalised with their mean and std, masks resized with nearest-neighbour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from stitchframe import FASHION_MNIST_CLASSES, DatasetSplits, Preprocess, SpecError, image_transform, read_idx

from .options import FashionMNISTMasksOptions, ShapesOptions

__all__ = [
    "SHAPE_CLASSES",
    "FASHION_MASK_CLASSES",
    "ShapesSegmentation",
    "FashionMNISTMasks",
    "load_shapes",
    "load_fashion_mnist_masks",
]

#: Class names, by mask value.
SHAPE_CLASSES = ("background", "disc", "square", "triangle")

#: Class names of :class:`FashionMNISTMasks`, by mask value.
FASHION_MASK_CLASSES = ("background", *FASHION_MNIST_CLASSES)


class ShapesSegmentation(Dataset):
    """Synthetic shapes segmentation (see the module docstring).

    Args:
        size: Number of images.
        image_size: ``(H, W)``.
        max_shapes: Most shapes per image (at least one).
        noise: Std of the pixel noise (images are in ``[0, 1]`` before normalising).
        seed: Seed; use different seeds (or offsets) for training and validation splits.
        mean: Per-channel normalisation mean (an anchor family's ``Preprocess.mean``).
        std: Per-channel normalisation std.
    """

    classes = SHAPE_CLASSES

    def __init__(
        self,
        size: int,
        image_size: tuple[int, int] = (32, 32),
        *,
        max_shapes: int = 3,
        noise: float = 0.05,
        seed: int = 0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        if size < 1 or max_shapes < 1 or min(image_size) < 8:
            raise SpecError(
                f"ShapesSegmentation: size {size}, max_shapes {max_shapes} and image_size {tuple(image_size)} must be "
                "at least 1, 1 and 8x8"
            )
        self.size, self.image_size, self.max_shapes = size, tuple(image_size), max_shapes
        self.noise, self.seed = noise, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.classes)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        h, w = self.image_size
        coarse = torch.rand(1, 3, 2, 2, generator=g) * 0.6 + 0.2
        image = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0]
        mask = torch.zeros(h, w, dtype=torch.long)
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        n = int(torch.randint(1, self.max_shapes + 1, (1,), generator=g))
        for _ in range(n):
            cls = int(torch.randint(1, 4, (1,), generator=g))
            r = float(torch.empty(1).uniform_(0.12, 0.25, generator=g)) * min(h, w)
            cy = float(torch.empty(1).uniform_(r, h - r, generator=g))
            cx = float(torch.empty(1).uniform_(r, w - r, generator=g))
            inside = _shape(cls, ys - cy, xs - cx, r)
            colour = torch.rand(3, 1, 1, generator=g)
            image = torch.where(inside, colour, image)
            mask[inside] = cls
        image = (image + self.noise * torch.randn(image.shape, generator=g)).clamp(0, 1)
        return (image - self.mean) / self.std, mask


def _shape(cls: int, dy: torch.Tensor, dx: torch.Tensor, r: float) -> torch.Tensor:
    """Pixels inside a disc (1), square (2) or upward triangle (3) of radius ``r`` centred at the origin."""
    if cls == 1:
        return dy**2 + dx**2 <= r**2
    if cls == 2:
        return (dy.abs() <= r * 0.85) & (dx.abs() <= r * 0.85)
    # triangle: apex (−r, 0), base at y = +r from x = −r to +r
    return (dy <= r) & (dx.abs() <= (dy + r) / 2)


def _image_size(preprocess: Preprocess, name: str) -> tuple[int, int]:
    if preprocess.input_size is None or preprocess.modality != "image":
        raise SpecError(f"data.name: {name!r} is image segmentation, but the anchors take {preprocess.modality} "
                        "inputs without an image size; use image anchors (or set data.img_size)")
    return int(preprocess.input_size[1]), int(preprocess.input_size[2])


def load_shapes(options: ShapesOptions, preprocess: Preprocess) -> DatasetSplits:
    """Synthetic shapes segmentation generated on the fly: discs, squares, triangles and the background (4 classes).

    :class:`ShapesSegmentation` at the anchors' input size; the validation split uses ``seed + 1``.
    """
    size = _image_size(preprocess, "shapes")
    kw = {"max_shapes": options.max_shapes, "noise": options.noise, "mean": preprocess.mean, "std": preprocess.std}
    train = ShapesSegmentation(options.train_size, size, seed=options.seed, **kw)
    val = ShapesSegmentation(options.val_size, size, seed=options.seed + 1, **kw)
    return DatasetSplits(
        train=train, val=val, num_classes=len(SHAPE_CLASSES), classes=SHAPE_CLASSES,
        description=f"synthetic shapes segmentation {size[0]}x{size[1]}: {len(train)} train / {len(val)} val "
        "images, 4 classes",
    )


class FashionMNISTMasks(Dataset):
    """Fashion-MNIST images with masks derived from their pixels (see the module docstring).

    Args:
        images: ``[N, 28, 28]`` ``uint8`` images.
        labels: ``[N]`` garment classes ``0..9``.
        transform: Turns a ``uint8`` tensor ``[1, 28, 28]`` into the model's input ``[3, H, W]``.
        size: ``(H, W)`` of the masks (the model's input size).
        threshold: Pixels brighter than this are the garment.
    """

    classes = FASHION_MASK_CLASSES

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
                 size: tuple[int, int], threshold: int) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.size, self.threshold = tuple(size), threshold

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i].unsqueeze(0)
        mask = torch.where(image > self.threshold, self.labels[i] + 1, 0).to(torch.uint8)
        mask = F.interpolate(mask[None].float(), size=self.size, mode="nearest")[0, 0].long()
        return self.transform(image), mask


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(dataset):
        return dataset
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return Subset(dataset, idx.tolist())


def load_fashion_mnist_masks(options: FashionMNISTMasksOptions, preprocess: Preprocess) -> DatasetSplits:
    """Fashion-MNIST garments with masks from their own pixels: the garment's class where bright, else background.

    :class:`FashionMNISTMasks` from the idx files in ``options.root`` (11
    classes: the background and the 10 garments); the test set is the
    validation split.
    """
    size = _image_size(preprocess, "fashion_mnist_masks")
    root = Path(options.root)
    files = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    missing = [name for pair in files.values() for name in pair if not (root / name).is_file()]
    if missing:
        raise SpecError(f"data.options.root: {', '.join(missing)} not found in {str(root)!r}; install the Debian "
                        "package dataset-fashion-mnist or point data.options.root at a folder holding the four "
                        "Fashion-MNIST idx files (or use data.name: shapes, generated on the fly)")
    splits = {}
    for split, (img, lab) in files.items():
        images = torch.from_numpy(read_idx(root / img))
        labels = torch.from_numpy(read_idx(root / lab)).long()
        transform = image_transform(preprocess, train=False, crop=False)
        splits[split] = FashionMNISTMasks(images, labels, transform, size, options.threshold)
    train = _subset(splits["train"], options.train_size, options.seed)
    val = _subset(splits["val"], options.val_size, options.seed + 1)
    return DatasetSplits(
        train=train, val=val, num_classes=len(FASHION_MASK_CLASSES), classes=FASHION_MASK_CLASSES,
        description=f"Fashion-MNIST garment masks (pixels > {options.threshold}) from {str(root)!r} at "
        f"{size[0]}x{size[1]}: {len(train)} train / {len(val)} val images, 11 classes",
    )
