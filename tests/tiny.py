"""Tiny, randomly initialised, pure-torch models and a test plugin that adapts them.

The core tests must pass with no plugin installed, so they use these instead of
timm or transformers models.  Every model is built from a fixed seed.
"""

from __future__ import annotations

import re

import attrs
import torch
import torch.nn.functional as F
from torch import nn

import stitchframe
from stitchframe import Anchor, Preprocess


class TinyAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TinyBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TinyAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyPatchEmbed(nn.Module):
    """Patch embedding, class token and position embedding (the ViT stem)."""

    def __init__(self, dim: int, img: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        n = (img // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class TinyClsHead(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, 0])


class TinyViT(nn.Module):
    """A ViT with a class token: 16x16 inputs, 4x4 patches."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 2, classes: int = 10, img: int = 16) -> None:
        super().__init__()
        self.embed = TinyPatchEmbed(dim, img, 4)
        self.blocks = nn.ModuleList(TinyBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = TinyClsHead(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


class TinyConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class TinyPoolHead(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class TinyCNN(nn.Module):
    """Stem plus three conv blocks (the last halves the grid) and a pooled head."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU())
        self.layers = nn.ModuleList(
            [TinyConvBlock(width, width, 1), TinyConvBlock(width, 2 * width, 1), TinyConvBlock(2 * width, 2 * width, 2)]
        )
        self.head = TinyPoolHead(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


PREPROCESS = Preprocess(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def tiny_vit(dim: int = 64, depth: int = 4, *, seed: int = 0, classes: int = 10) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT(dim=dim, depth=depth, heads=2, classes=classes).eval()


def tiny_cnn(width: int = 16, *, seed: int = 0, classes: int = 10) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(width=width, classes=classes).eval()


def vit_anchor(model: TinyViT, name: str) -> Anchor:
    return Anchor(
        name,
        stem=model.embed,
        blocks=list(model.blocks),
        norm=model.norm,
        head=model.head,
        layout="tokens",
        prefix=1,
        example_inputs=torch.randn(1, 3, 16, 16),
        model=model,
        preprocess=PREPROCESS,
        family="tiny_vit",
    )


def cnn_anchor(model: TinyCNN, name: str) -> Anchor:
    return Anchor(
        name,
        stem=model.stem,
        blocks=list(model.layers),
        head=model.head,
        layout="map",
        stages=[0, 0, 0, 1],
        example_inputs=torch.randn(1, 3, 16, 16),
        model=model,
        preprocess=PREPROCESS,
        family="tiny_cnn",
    )


@attrs.frozen(kw_only=True)
class TinyOptions:
    """Options of the ``tiny`` test adapter."""

    seed: int = attrs.field(default=0, metadata={"help": "Seed of the random weights."})
    depth: int = attrs.field(default=4, validator=attrs.validators.ge(1), metadata={"help": "ViT depth."})
    classes: int = attrs.field(default=10, metadata={"help": "Output classes."})


def load_tiny(identifier: str, options: TinyOptions, registries=None, *, structure_only: bool = False) -> Anchor:
    """``tiny:vit<dim>`` or ``tiny:cnn<width>`` (random weights: a structure-only build needs nothing more)."""
    name = identifier.replace("-", "_")
    match = re.fullmatch(r"(vit|cnn)([1-9][0-9]{0,2})", identifier)
    if match is None or int(match.group(2)) % 2:
        raise stitchframe.SpecError(f"tiny adapter: unknown model {identifier!r}; use vit<dim> or cnn<width> (even)")
    width = int(match.group(2))
    if match.group(1) == "vit":
        return vit_anchor(tiny_vit(width, options.depth, seed=options.seed, classes=options.classes), name)
    return cnn_anchor(tiny_cnn(width, seed=options.seed, classes=options.classes), name)


class TinyPlugin:
    """Test plugin registering the ``tiny`` adapter."""

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("tiny", load_tiny, options=TinyOptions)


def images(n: int = 8, *, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g)


class Rescaled(nn.Module):
    """The SN-Net's logits through a learned per-class scale: a task model with a layer of its own."""

    def __init__(self, snnet: stitchframe.SNNet, classes: int = 10) -> None:
        super().__init__()
        self.snnet = snnet
        self.scale = nn.Parameter(torch.ones(classes))

    def forward(self, x):
        return self.snnet(x) * self.scale


class RescaledTask(stitchframe.ClassificationTask):
    """Classification through :class:`Rescaled`: the generic task path (own layers, ``task.safetensors``)."""

    metric = "top1"
    metric_label = "top-1 (rescaled) %"

    def build_model(self, snnet, splits):
        return Rescaled(snnet, splits.num_classes)

    def metrics(self, stats):
        m = super().metrics(stats)
        return {**m, "top1": m["accuracy"]}


class TinyTaskPlugin:
    """Test plugin registering the ``rescaled`` task."""

    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_tasks(register):
        register("rescaled", RescaledTask)
