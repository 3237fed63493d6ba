"""Test helpers of stitchframe-learngene: a toy ViT adapter (a teacher source that is not timm) and digits."""

from __future__ import annotations

from types import SimpleNamespace

import attrs
import torch
import torch.nn.functional as F
from stitchframe_learngene import PoolViT, vit_anchor

import stitchframe

# ---------------------------------------------------------------------------
# a toy ViT adapter (a teacher source that is not timm) and digits at 16x16
# ---------------------------------------------------------------------------
PREPROCESS = stitchframe.Preprocess(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@attrs.frozen(kw_only=True)
class ToyOptions:
    """Options of the ``toyvit`` test adapter."""

    depth: int = attrs.field(default=4, metadata={"help": "Blocks."})
    seed: int = attrs.field(default=0, metadata={"help": "Seed of the random weights."})
    weights: str | None = attrs.field(default=None, metadata={"help": "A safetensors state dict to load."})


def toy_model(dim: int, depth: int) -> PoolViT:
    return PoolViT(dim, depth, 2, 10, img=(3, 16, 16), grid=(4, 4), prefix=1, mlp_ratio=2.0)


def load_toy(identifier: str, options: ToyOptions, registries=None, *,
             structure_only: bool = False) -> stitchframe.Anchor:
    """``toyvit:<dim>``: a 16x16-input ViT with 4x4 patches and a class token."""
    torch.manual_seed(options.seed)
    model = toy_model(int(identifier), options.depth)
    if options.weights is not None and not structure_only:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(options.weights))
    return vit_anchor(model, f"toyvit{identifier}", preprocess=PREPROCESS, source=f"toyvit:{identifier}")


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 digits, 16x16, three channels, normalised to [-1, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - 0.5) / 0.5, torch.tensor(bunch.target, dtype=torch.long)


@attrs.frozen(kw_only=True)
class DigitsOptions:
    """Options of the ``digits16`` test dataset."""


def load_digits16(options: DigitsOptions, preprocess) -> SimpleNamespace:
    x, y = digits_tensors()
    train = torch.utils.data.TensorDataset(x[:1400], y[:1400])
    val = torch.utils.data.TensorDataset(x[1400:], y[1400:])
    return SimpleNamespace(train=train, val=val, num_classes=10)


class ToyPlugin:
    """Test plugin: the ``toyvit`` adapter and the ``digits16`` dataset."""

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("toyvit", load_toy, options=ToyOptions)

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_datasets(register):
        register("digits16", load_digits16, options=DigitsOptions)
