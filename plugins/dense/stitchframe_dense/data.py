"""Synthetic shapes segmentation: images of discs, squares and triangles, generated on the fly.

Every image has a smooth random background and one to ``max_shapes`` shapes
of random size, position and colour (colour says nothing about the class, so
a model has to read the shape); later shapes occlude earlier ones.  The mask
has class ``0`` for the background, ``1`` disc, ``2`` square, ``3`` triangle.
Item ``i`` is a function of ``(seed, i)`` only: nothing is stored or
downloaded, and every access gives the same tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from stitchframe import SpecError

__all__ = ["SHAPE_CLASSES", "ShapesSegmentation"]

#: Class names, by mask value.
SHAPE_CLASSES = ("background", "disc", "square", "triangle")


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
