"""Real photographs with ImageNet classes (scikit-image's bundled images) and random crops of them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from stitchframe import Preprocess

__all__ = ["CALIBRATION_PHOTOS", "EVAL_PHOTOS", "EXPECTED", "centre_view", "load_photo", "random_views", "views"]

#: Photographs to evaluate on (each has an ImageNet class, or several plausible ones).
EVAL_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle", "clock")

#: Other images, never evaluated on, for calibration.
CALIBRATION_PHOTOS = ("camera", "coins", "moon", "hubble_deep_field", "immunohistochemistry", "retina", "brick",
                      "grass", "gravel", "colorwheel", "page", "text", "cell")

#: ImageNet classes a correct classifier puts in its top 5 (a sanity check of the real weights).
EXPECTED = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {504, 967, 968},  # coffee mug, espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "stereo_motorcycle": {665, 670},  # moped, motor scooter
    "clock": {409, 892},  # analog clock, wall clock
}


def load_photo(name: str) -> torch.Tensor:
    """``skimage.data.<name>()`` as a float ``[3, H, W]`` tensor in ``[0, 1]`` (grey repeated, alpha dropped)."""
    from skimage import data

    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo pairs: the left image
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    x = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).float()
    return x / 255.0 if x.max() > 1.0 else x


def _normalise(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    return (x - torch.tensor(pp.mean)[:, None, None]) / torch.tensor(pp.std)[:, None, None]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


def centre_view(photo: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """timm's evaluation view: short side to ``size / crop_pct``, centre crop, normalise; ``[3, size, size]``."""
    size = pp.input_size[1]
    h, w = photo.shape[-2:]
    short = round(size / pp.crop_pct)
    x = _resize(photo, (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short))
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return _normalise(x[:, top : top + size, left : left + size], pp)


def random_views(photo: torch.Tensor, pp: Preprocess, n: int, *, seed: int,
                 scale: tuple[float, float] = (0.3, 1.0)) -> torch.Tensor:
    """``n`` random resized crops (area fraction in ``scale``, aspect 3/4..4/3, random flips); ``[n, 3, size, size]``."""
    size = pp.input_size[1]
    h, w = photo.shape[-2:]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        u = torch.rand(4, generator=g).tolist()
        area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
        ratio = float(np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * u[1]))
        ch = min(h, max(8, round((area / ratio) ** 0.5)))
        cw = min(w, max(8, round((area * ratio) ** 0.5)))
        top, left = round((h - ch) * u[2]), round((w - cw) * u[3])
        crop = _resize(photo[:, top : top + ch, left : left + cw], (size, size))
        if torch.rand(1, generator=g).item() < 0.5:
            crop = crop.flip(-1)
        out.append(_normalise(crop, pp))
    return torch.stack(out)


def views(names: Sequence[str], pp: Preprocess, per_photo: int, *, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Random views of several photos, and the photo name of each view."""
    xs, labels = [], []
    for i, name in enumerate(names):
        xs.append(random_views(load_photo(name), pp, per_photo, seed=seed * 1000 + i))
        labels += [name] * per_photo
    return torch.cat(xs), labels
