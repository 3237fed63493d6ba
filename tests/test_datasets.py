from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import stitchframe
from stitchframe import Preprocess
from stitchframe.datasets import (
    FASHION_MNIST_ROOT,
    DatasetSplits,
    DigitsOptions,
    FashionMNISTOptions,
    ImageFolderOptions,
    SyntheticOptions,
    load_digits,
    load_fashion_mnist,
    load_imagefolder,
    load_synthetic,
    read_idx,
)
from stitchframe.errors import StitchframeError

HALF = Preprocess(input_size=(3, 28, 28), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
IMAGENET = Preprocess(input_size=(3, 32, 32))  # ImageNet mean/std
have_fashion = pytest.mark.skipif(
    not (Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST idx files not installed (Debian package dataset-fashion-mnist)",
)


def test_builtin_datasets_are_registered_through_the_hook(regs):
    assert {"fashion_mnist", "digits", "imagefolder", "synthetic"} <= set(regs.datasets.names())
    assert regs.datasets.origin("digits") == "stitchframe.datasets"
    assert "stitchframe.datasets" in stitchframe.DEFAULT_PLUGINS


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    with gzip.open(tmp_path / "a.gz", "rb") as fh:
        data = fh.read()
    with gzip.open(tmp_path / "short.gz", "wb") as fh:
        fh.write(data[:-5])
    with pytest.raises(StitchframeError, match="truncated"):
        read_idx(tmp_path / "short.gz")


@have_fashion
def test_fashion_mnist_idx_files():
    images = read_idx(Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz")
    labels = read_idx(Path(FASHION_MNIST_ROOT) / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10


@have_fashion
def test_fashion_mnist_loader_shapes_labels_and_normalisation():
    splits = load_fashion_mnist(FashionMNISTOptions(train_size=50, val_size=20, seed=3), HALF)
    assert isinstance(splits, DatasetSplits)
    assert (len(splits.train), len(splits.val), splits.num_classes) == (50, 20, 10)
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"
    raw_images = read_idx(Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz")
    raw_labels = read_idx(Path(FASHION_MNIST_ROOT) / "train-labels-idx1-ubyte.gz")
    for k in (0, 17, 49):
        x, y = splits.train[k]
        idx = splits.train.indices[k]
        assert x.shape == (3, 28, 28) and x.dtype == torch.float32
        assert y == int(raw_labels[idx])
        expected = (torch.from_numpy(raw_images[idx].astype(np.float32)) / 255 - 0.5) / 0.5
        for c in range(3):  # grayscale repeated to three channels, (x/255 - 0.5)/0.5
            torch.testing.assert_close(x[c], expected, rtol=0, atol=1e-6)
    again = load_fashion_mnist(FashionMNISTOptions(train_size=50, val_size=20, seed=3), HALF)
    assert again.train.indices == splits.train.indices  # the subset is fixed by the seed


@have_fashion
def test_fashion_mnist_resizes_to_the_anchor_input():
    splits = load_fashion_mnist(FashionMNISTOptions(train_size=4, val_size=4), IMAGENET)
    x, _ = splits.val[0]
    assert x.shape == (3, 32, 32)
    # ImageNet normalisation: a black pixel maps to -mean/std per channel
    mean, std = torch.tensor(IMAGENET.mean), torch.tensor(IMAGENET.std)
    assert torch.allclose(x.amin(dim=(1, 2)), -mean / std, atol=1e-4)


def test_fashion_mnist_missing_files_says_how_to_fix(tmp_path):
    with pytest.raises(StitchframeError) as info:
        load_fashion_mnist(FashionMNISTOptions(root=str(tmp_path)), HALF)
    msg = str(info.value)
    assert "dataset-fashion-mnist" in msg and "digits" in msg and str(tmp_path) in msg
    assert "\n" not in msg


def test_fashion_mnist_falls_back_to_digits(tmp_path):
    with pytest.warns(UserWarning, match="falling back to scikit-learn digits"):
        splits = load_fashion_mnist(FashionMNISTOptions(root=str(tmp_path), fallback="digits"), HALF)
    assert "digits" in splits.description and "fallback" in splits.description and splits.name == "digits"
    assert len(splits.train) + len(splits.val) == 1797


def test_digits_split_is_stratified_deterministic_and_normalised():
    pre = Preprocess(input_size=(3, 8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    a = load_digits(DigitsOptions(val_fraction=0.2, seed=0), pre)
    b = load_digits(DigitsOptions(val_fraction=0.2, seed=0), pre)
    c = load_digits(DigitsOptions(val_fraction=0.2, seed=1), pre)
    assert len(a.train) + len(a.val) == 1797 and abs(len(a.val) - 0.2 * 1797) <= 10
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    counts = torch.bincount(a.val.labels, minlength=10)
    assert counts.min() >= 30  # every class held out in proportion
    from sklearn.datasets import load_digits as sk

    raw = sk()
    x, y = a.val[5]
    # find the raw image (values 0..16) that produced this item
    img = a.val.images[5, 0].float()
    match = [i for i in range(len(raw.target)) if np.array_equal(np.round(raw.images[i] * 255 / 16), img.numpy())]
    assert match and raw.target[match[0]] == y
    expected = (img / 255 - 0.5) / 0.25
    assert x.shape == (3, 8, 8)
    torch.testing.assert_close(x, expected.expand(3, 8, 8), rtol=0, atol=1e-6)


def test_digits_upsampled_to_three_channels():
    splits = load_digits(DigitsOptions(), IMAGENET)
    x, y = splits.train[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int) and 0 <= y < 10


def test_synthetic_is_deterministic_and_learnable():
    pre = Preprocess(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    splits = load_synthetic(SyntheticOptions(num_classes=5, train_size=200, val_size=100, seed=4), pre)
    x0, y0 = splits.train[7]
    assert x0.shape == (3, 16, 16) and y0 == 7 % 5
    assert torch.equal(x0, splits.train[7][0])
    assert not torch.equal(splits.train[0][0], splits.val[0][0])  # disjoint noise per split
    xs = torch.stack([splits.train[i][0] for i in range(200)])
    ys = torch.tensor([splits.train[i][1] for i in range(200)])
    means = torch.stack([xs[ys == c].mean(0) for c in range(5)])
    vx = torch.stack([splits.val[i][0] for i in range(100)])
    vy = torch.tensor([splits.val[i][1] for i in range(100)])
    pred = torch.cdist(vx.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == vy).float().mean() > 0.9  # class structure a nearest-mean classifier finds


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    splits = load_imagefolder(ImageFolderOptions(root=str(tmp_path), augment=False), IMAGENET)
    assert (len(splits.train), len(splits.val), splits.num_classes) == (6, 4, 2)
    assert splits.classes == ("cat", "dog")
    x, y = splits.val[3]
    assert x.shape == (3, 32, 32) and y == 1
    with pytest.raises(StitchframeError, match="does not exist"):
        load_imagefolder(ImageFolderOptions(root=str(tmp_path / "nope")), IMAGENET)


def test_agreed_preprocess_checks_the_anchor_sizes():
    from stitchframe.datasets import agreed_preprocess
    from stitchframe.errors import SpecError
    from tests import tiny

    a = tiny.vit_anchor(tiny.tiny_vit(32), "a")
    b = tiny.cnn_anchor(tiny.tiny_cnn(8), "b")
    pre, notes = agreed_preprocess([a, b])
    assert pre.input_size == (3, 16, 16) and not notes
    assert agreed_preprocess([a, b], 16)[0].input_size == (3, 16, 16)
    b.example_inputs = torch.randn(1, 3, 24, 24)
    with pytest.raises(SpecError, match="different input sizes"):
        agreed_preprocess([a, b])
    with pytest.raises(SpecError, match=r"anchors\[1\] \('b'\) was built for 24x24"):
        agreed_preprocess([a, b], 16)
    b.example_inputs = torch.randn(1, 3, 16, 16)
    b.preprocess = Preprocess(input_size=(3, 16, 16), mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    assert "normalise differently" in agreed_preprocess([a, b])[1][0]
