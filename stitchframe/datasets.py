"""Built-in datasets: Fashion-MNIST, scikit-learn digits, ImageNet-style folders, synthetic images.

The built-in plugin ``stitchframe.datasets`` registers them through the
``stitchframe_register_datasets`` hook, exactly as a third-party plugin
would; its hook lives in :mod:`stitchframe.builtins` and their options in
:mod:`stitchframe.dataset_options`, so registering them imports no torch.
A dataset loader is called as ``load(options, preprocess)`` and
returns :class:`DatasetSplits`; ``preprocess`` is the
:class:`~stitchframe.Preprocess` the anchors agree on (input size, mean, std,
interpolation, crop), with ``data.img_size`` already applied.  Every split
yields ``(inputs, target)`` pairs with ``inputs`` a normalised float tensor
``[3, H, W]`` and ``target`` an ``int``.

Transforms use :mod:`torchvision.transforms.v2`.  Grayscale sources
(Fashion-MNIST, digits) are resized and repeated to three channels.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .anchors import Anchor, Preprocess
from .errors import PluginError, SpecError, StitchframeError, plugin_call
from .dataset_options import (
    FASHION_MNIST_ROOT,
    DigitsOptions,
    FashionMNISTOptions,
    ImageFolderOptions,
    SyntheticOptions,
)
from .spec import Spec, structure_options

if TYPE_CHECKING:
    from .plugins import Registries

__all__ = [
    "DatasetSplits",
    "agreed_preprocess",
    "load_data",
    "ArrayImageDataset",
    "FashionMNISTOptions",
    "DigitsOptions",
    "ImageFolderOptions",
    "SyntheticOptions",
    "SyntheticImages",
    "image_transform",
    "read_idx",
    "load_fashion_mnist",
    "load_digits",
    "load_imagefolder",
    "load_synthetic",
    "FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
]

_v = attrs.validators

#: Fashion-MNIST's ten class names, in label order (label 0 is ``"T-shirt/top"``).
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@attrs.frozen(kw_only=True)
class DatasetSplits:
    """What a dataset loader returns.

    Attributes:
        train: Training split; items are ``(inputs, target)``.
        val: Validation split used for calibration-free evaluation of every route.
        num_classes: Number of classes (the anchors' heads must output this many logits).
        classes: Class names, ``num_classes`` of them.
        modality: ``"image"``, ``"text"`` or ``"other"``.
        collate_fn: Batch collation for the DataLoader (``None``: PyTorch's default).
        description: One line describing what was loaded (printed by ``build``).
        name: The registered name of the dataset actually loaded when a loader
            substituted another one (``fashion_mnist`` with ``fallback: digits``
            sets ``"digits"``); ``None``: the spec's ``data.name``.  Reports,
            plot titles and ``build.json`` name this dataset.
    """

    train: Any
    val: Any
    num_classes: int = attrs.field(validator=[_v.instance_of(int), _v.ge(1)])
    classes: tuple[str, ...] = attrs.field(converter=tuple)
    modality: str = "image"
    collate_fn: Callable[[list], Any] | None = None
    description: str = ""
    name: str | None = None

    def __attrs_post_init__(self) -> None:
        if len(self.classes) != self.num_classes:
            raise StitchframeError(
                f"DatasetSplits has {len(self.classes)} class names for num_classes={self.num_classes}"
            )


# ---------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------
def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(name.lower())
    except ValueError:
        valid = ", ".join(m.value for m in InterpolationMode)
        raise SpecError(f"Unknown interpolation {name!r} in the anchors' Preprocess; valid: {valid}") from None


def image_transform(preprocess: Preprocess, *, train: bool, augment: bool = False, crop: bool = True):
    """The torchvision v2 transform for images of an anchor family.

    Takes a PIL image or a ``uint8`` tensor ``[C, H, W]`` (1 or 3 channels) and
    returns a normalised ``float32`` tensor ``[3, H, W]`` at
    ``preprocess.input_size``.

    Args:
        preprocess: Input size, mean, std, interpolation and crop fraction.
        train: Build the training transform (random crop and flip when ``augment``).
        augment: Random-resized crop and horizontal flip for training.
        crop: Evaluate with a centre crop of ``crop_pct`` (ImageNet style);
            ``False`` resizes the whole image (small datasets whose objects
            fill the frame).
    """
    from torchvision.transforms import v2

    if preprocess.input_size is None:
        raise StitchframeError("The anchors' Preprocess has no input_size; set data.img_size in the spec")
    _, h, w = preprocess.input_size
    interp = _interpolation(preprocess.interpolation)
    if train and augment:
        geometry = [v2.RandomResizedCrop((h, w), scale=(0.35, 1.0), interpolation=interp, antialias=True),
                    v2.RandomHorizontalFlip()]
    elif crop and preprocess.crop_pct < 1.0:
        scale = (round(h / preprocess.crop_pct), round(w / preprocess.crop_pct))
        geometry = [v2.Resize(scale, interpolation=interp, antialias=True), v2.CenterCrop((h, w))]
    else:
        geometry = [v2.Resize((h, w), interpolation=interp, antialias=True)]
    return v2.Compose([
        v2.ToImage(),
        *geometry,
        v2.RGB(),  # after resizing: grayscale is resized once, then repeated
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(preprocess.mean), std=list(preprocess.std)),
    ])


class ArrayImageDataset(Dataset):
    """Images held in memory as ``uint8`` arrays, transformed on access.

    Args:
        images: ``[N, H, W]`` (grayscale) or ``[N, C, H, W]`` ``uint8`` array.
        labels: ``[N]`` integer labels.
        transform: Applied to each ``uint8`` tensor ``[C, H, W]``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[torch.Tensor], Any]) -> None:
        if len(images) != len(labels):
            raise StitchframeError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        if self.images.dim() == 3:
            self.images = self.images.unsqueeze(1)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def _subsample(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """A fixed, seeded random subset of ``size`` items (all of them when ``size`` is ``None``)."""
    n = len(dataset)
    if size is None or size >= n:
        return dataset
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return Subset(dataset, idx.tolist())


# ---------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------
def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (``.gz`` or plain), as used by MNIST and Fashion-MNIST.

    Raises:
        StitchframeError: The file is not an unsigned-byte idx file or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise StitchframeError(f"{str(path)!r} is not an idx file (bad magic number)")
    if data[2] != 0x08:
        raise StitchframeError(f"{str(path)!r}: only unsigned-byte idx files are supported (type 0x{data[2]:02x})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - offset != expected:
        raise StitchframeError(
            f"{str(path)!r} holds {len(data) - offset} bytes of data for shape {dims} ({expected} expected); "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _fashion_files(root: Path) -> dict[str, tuple[Path, Path]] | None:
    files = {split: (root / img, root / lab) for split, (img, lab) in _FASHION_FILES.items()}
    if all(p.is_file() for pair in files.values() for p in pair):
        return files
    return None


def load_fashion_mnist(options: FashionMNISTOptions, preprocess: Preprocess) -> DatasetSplits:
    """Fashion-MNIST from its idx files: 60000 training and 10000 test images, 28x28 grayscale, 10 classes.

    The test set is the validation split.  Images are resized to the anchors'
    input size and repeated to three channels.
    """
    root = Path(options.root)
    files = _fashion_files(root)
    if files is None:
        message = (
            f"data.options.root: Fashion-MNIST files not found in {str(root)!r} "
            f"(expected {', '.join(sorted(sum(_FASHION_FILES.values(), ())))}); install the Debian package "
            "dataset-fashion-mnist (apt install dataset-fashion-mnist), point data.options.root at a folder "
            "holding them, or use data.name: digits"
        )
        if options.fallback == "digits":
            warnings.warn(
                f"Fashion-MNIST not found in {str(root)!r}; falling back to scikit-learn digits "
                "(data.options.fallback), so this build trains and reports on digits. For Fashion-MNIST: "
                "apt install dataset-fashion-mnist, or point data.options.root at its four idx files",
                stacklevel=2,
            )
            splits = load_digits(DigitsOptions(), preprocess)
            return attrs.evolve(splits, name="digits",
                                description=f"{splits.description} (fallback: Fashion-MNIST files missing)")
        raise SpecError(message + " (or set data.options.fallback: digits)")
    splits = {}
    for split, (img, lab) in files.items():
        images, labels = read_idx(img), read_idx(lab)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise StitchframeError(
                f"{str(img)!r} and {str(lab)!r} do not match: images {images.shape}, labels {labels.shape}"
            )
        transform = image_transform(preprocess, train=split == "train", augment=options.augment, crop=False)
        splits[split] = ArrayImageDataset(images, labels, transform)
    train = _subsample(splits["train"], options.train_size, options.seed)
    val = _subsample(splits["val"], options.val_size, options.seed + 1)
    return DatasetSplits(
        train=train,
        val=val,
        num_classes=10,
        classes=FASHION_MNIST_CLASSES,
        description=f"Fashion-MNIST from {str(root)!r}: {len(train)} train / {len(val)} val images",
    )


# ---------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------
def load_digits(options: DigitsOptions, preprocess: Preprocess) -> DatasetSplits:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split deterministically.

    The split is stratified: each class contributes ``val_fraction`` of its
    images to validation, chosen by a seeded permutation.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise StitchframeError(f"The digits dataset needs scikit-learn (pip install scikit-learn): {exc}") from None
    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(options.seed)
    val_idx = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(len(idx) * options.val_fraction))
        val_idx.extend(rng.permutation(idx)[:k].tolist())
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    train = ArrayImageDataset(
        images[~is_val], labels[~is_val], image_transform(preprocess, train=True, augment=options.augment, crop=False)
    )
    val = ArrayImageDataset(images[is_val], labels[is_val], image_transform(preprocess, train=False, crop=False))
    return DatasetSplits(
        train=train,
        val=val,
        num_classes=10,
        classes=tuple(str(c) for c in range(10)),
        description=f"scikit-learn digits: {len(train)} train / {len(val)} val images",
    )


# ---------------------------------------------------------------------------
# ImageNet-style folders
# ---------------------------------------------------------------------------
def load_imagefolder(options: ImageFolderOptions, preprocess: Preprocess) -> DatasetSplits:
    """An ImageNet-layout folder (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``) via torchvision.

    Evaluation resizes to ``input_size / crop_pct`` and centre-crops, as the
    anchors were evaluated on ImageNet.
    """
    from torchvision.datasets import ImageFolder

    root = Path(options.root)
    dirs = {"train": root / options.train_dir, "val": root / options.val_dir}
    for split, d in dirs.items():
        if not d.is_dir():
            raise SpecError(
                f"data.options.root: the imagefolder {split} folder {str(d)!r} does not exist; the root must hold "
                f"{options.train_dir!r} and {options.val_dir!r} folders with one sub-folder per class"
            )
    train = ImageFolder(str(dirs["train"]), transform=image_transform(preprocess, train=True, augment=options.augment))
    val = ImageFolder(str(dirs["val"]), transform=image_transform(preprocess, train=False))
    if train.classes != val.classes:
        raise StitchframeError(
            f"imagefolder: {str(dirs['train'])!r} and {str(dirs['val'])!r} have different class folders "
            f"({len(train.classes)} vs {len(val.classes)}); both splits need the same classes"
        )
    train_s = _subsample(train, options.train_size, options.seed)
    val_s = _subsample(val, options.val_size, options.seed + 1)
    return DatasetSplits(
        train=train_s,
        val=val_s,
        num_classes=len(train.classes),
        classes=tuple(train.classes),
        description=f"image folders in {str(root)!r}: {len(train_s)} train / {len(val_s)} val images, "
        f"{len(train.classes)} classes",
    )


# ---------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------
class SyntheticImages(Dataset):
    """Images made of a smooth per-class pattern plus noise: random but learnable.

    Item ``i`` has class ``i % num_classes`` and is generated on access from
    ``(seed, offset + i)``, so no images are stored and every access gives the
    same tensor.

    Args:
        patterns: ``[num_classes, 3, H, W]`` class patterns in ``[0, 1]``.
        size: Number of items.
        noise: Noise std.
        seed: Noise seed.
        offset: Index offset (different splits use disjoint offsets).
        mean: Normalisation mean.
        std: Normalisation std.
    """

    def __init__(self, patterns: torch.Tensor, size: int, *, noise: float, seed: int, offset: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.patterns = patterns
        self.size = size
        self.noise = noise
        self.seed = seed
        self.offset = offset
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        label = i % len(self.patterns)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.offset + i)
        img = self.patterns[label] + self.noise * torch.randn(self.patterns.shape[1:], generator=g)
        return (img.clamp(0.0, 1.0) - self.mean) / self.std, label


def load_synthetic(options: SyntheticOptions, preprocess: Preprocess) -> DatasetSplits:
    """Synthetic images for tests and smoke runs: each class is a smooth random colour pattern plus noise."""
    if preprocess.input_size is None:
        raise StitchframeError("synthetic: the anchors' Preprocess has no input_size; set data.img_size in the spec")
    c, h, w = preprocess.input_size
    g = torch.Generator().manual_seed(options.seed)
    coarse = torch.rand(options.num_classes, c, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    kw = {"noise": options.noise, "seed": options.seed, "mean": preprocess.mean[:c], "std": preprocess.std[:c]}
    train = SyntheticImages(patterns, options.train_size, offset=0, **kw)
    val = SyntheticImages(patterns, options.val_size, offset=10**9, **kw)
    return DatasetSplits(
        train=train,
        val=val,
        num_classes=options.num_classes,
        classes=tuple(f"class_{i}" for i in range(options.num_classes)),
        description=f"synthetic images {h}x{w}: {len(train)} train / {len(val)} val, {options.num_classes} classes",
    )


# ---------------------------------------------------------------------------
# choosing the preprocessing and loading the spec's dataset
# ---------------------------------------------------------------------------
def _traced_size(anchor: Anchor) -> tuple[int, int] | None:
    x = anchor.example_inputs
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return int(x.shape[-2]), int(x.shape[-1])
    size = anchor.preprocess.input_size
    return (int(size[1]), int(size[2])) if size is not None else None


def agreed_preprocess(anchors: list[Anchor], img_size: int | None = None) -> tuple[Preprocess, list[str]]:
    """The input preprocessing all anchors accept, with ``data.img_size`` applied.

    Every route starts at some anchor's stem, so all anchors must be traced
    at the resolution the data has (their FLOPs and activation grids were
    measured there).  Mean/std come from the first anchor; a note says so
    when others differ.

    Returns:
        ``(preprocess, notes)``.

    Raises:
        SpecError: Mixed modalities, or anchors traced at another size than
            ``img_size`` (or at different sizes when it is unset).
    """
    base = anchors[0].preprocess
    notes: list[str] = []
    modalities = {a.preprocess.modality for a in anchors}
    if len(modalities) > 1:
        raise SpecError(f"anchors: the anchors take different modalities {sorted(modalities)}; use one family")
    if base.modality != "image":
        return base, notes
    sizes = {a.name: _traced_size(a) for a in anchors}
    if img_size is not None:
        for i, a in enumerate(anchors):
            if sizes[a.name] not in (None, (img_size, img_size)):
                h, w = sizes[a.name]
                raise SpecError(
                    f"data.img_size is {img_size} but anchors[{i}] ({a.name!r}) was built for {h}x{w} inputs; "
                    f"set the same image size in anchors[{i}].options (see its adapter's options) or drop data.img_size"
                )
        size = (img_size, img_size)
    else:
        distinct = {s for s in sizes.values() if s is not None}
        if len(distinct) > 1:
            raise SpecError(
                f"anchors: the anchors were built for different input sizes {sizes}; set data.img_size "
                "and the same image size in every anchor's options"
            )
        size = distinct.pop() if distinct else None
    if size is None:
        raise SpecError("anchors: no anchor declares an input size; set data.img_size")
    if any((a.preprocess.mean, a.preprocess.std) != (base.mean, base.std) for a in anchors):
        notes.append(f"anchors normalise differently; using {anchors[0].name}'s mean/std for every route")
    channels = base.input_size[0] if base.input_size else 3
    return attrs.evolve(base, input_size=(channels, *size)), notes


def load_data(spec: Spec, registries: Registries, preprocess: Preprocess) -> DatasetSplits:
    """Load ``spec.data`` through the dataset registry.

    Raises:
        SpecError: The spec has no ``data`` section or bad options.
        UnknownNameError: Unknown dataset.
        PluginError: The loader raised or returned something else than DatasetSplits.
    """
    if spec.data is None:
        raise SpecError("data: building needs a data section, e.g. data: {name: fashion_mnist}")
    entry = registries.datasets.get(spec.data.name, where="data.name")
    options = structure_options(entry.options, spec.data.options, "data.options")
    with plugin_call(f"data ({spec.data.name!r})", ("data.", "data:"),
                      f"Plugin {entry.plugin!r} failed to load dataset {spec.data.name!r} (data.name)"):
        splits = entry.obj(options, preprocess)
    if not isinstance(splits, DatasetSplits):
        raise PluginError(
            f"Dataset {spec.data.name!r} from plugin {entry.plugin!r} returned {type(splits).__name__}; "
            "a dataset loader must return stitchframe.DatasetSplits"
        )
    return splits
