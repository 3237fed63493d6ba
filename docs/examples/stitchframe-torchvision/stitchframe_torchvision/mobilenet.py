"""Anchors from torchvision's MobileNetV3 models (the adapter of tutorial 1)."""

from __future__ import annotations

import attrs
import torch
import torchvision
from torch import nn

import stitchframe

from .options import MODELS, MobileNetOptions


# --8<-- [start:head]
class MobileNetHead(nn.Module):
    """The model's last 1x1 convolution, pooling and classifier, as one head.

    It holds the model's own modules, so the anchor shares their weights.
    """

    def __init__(self, model: torchvision.models.MobileNetV3) -> None:
        super().__init__()
        self.conv = model.features[-1]
        self.pool = model.avgpool
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.conv(x)), 1))
# --8<-- [end:head]


# --8<-- [start:stages]
@torch.no_grad()
def grid_stages(stem: nn.Module, blocks: list[nn.Module], example: torch.Tensor) -> list[int]:
    """Stage of the stem and of every block: how many times the grid has shrunk so far."""
    x = stem(example)
    grids = [x.shape[-2:]]
    for block in blocks:
        x = block(x)
        grids.append(x.shape[-2:])
    stages = [0]
    for before, after in zip(grids, grids[1:]):
        stages.append(stages[-1] + (after != before))
    return stages
# --8<-- [end:stages]


# --8<-- [start:load]
def build_model(identifier: str, options: MobileNetOptions) -> torchvision.models.MobileNetV3:
    """The torchvision model, random or with torchvision's weights, in eval mode."""
    if identifier not in MODELS:
        raise stitchframe.SpecError(
            f"torchvision adapter: unknown model {identifier!r}; supported: {', '.join(MODELS)}"
        )
    builder = getattr(torchvision.models, identifier)
    if options.weights is None:
        return builder(weights=None, num_classes=options.num_classes, width_mult=options.width_mult).eval()
    choices = torchvision.models.get_model_weights(identifier)
    if options.weights not in choices.__members__:
        raise stitchframe.SpecError(
            f"torchvision adapter: {identifier} has no weights {options.weights!r}; "
            f"choose one of {', '.join(choices.__members__)} or null"
        )
    if options.num_classes != 1000 or options.width_mult != 1.0:
        raise stitchframe.SpecError(
            "torchvision adapter: pretrained weights need num_classes: 1000 and width_mult: 1.0"
        )
    return builder(weights=choices[options.weights]).eval()


def _preprocess(identifier: str, options: MobileNetOptions) -> stitchframe.Preprocess:
    size = (3, options.img_size, options.img_size)
    if options.weights is None:
        return stitchframe.Preprocess(input_size=size, crop_pct=0.875)
    t = torchvision.models.get_model_weights(identifier)[options.weights].transforms()
    return stitchframe.Preprocess(
        input_size=size,
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
        crop_pct=t.crop_size[0] / t.resize_size[0],
    )


# --8<-- [start:anchor]
def mobilenet_anchor(
    model: torchvision.models.MobileNetV3, identifier: str, options: MobileNetOptions
) -> stitchframe.Anchor:
    """Cut a MobileNetV3 into stem, inverted-residual blocks and head (sharing its weights)."""
    stem, blocks = model.features[0], list(model.features[1:-1])
    example = torch.randn(1, 3, options.img_size, options.img_size)
    return stitchframe.Anchor(
        identifier,
        stem=stem,
        blocks=blocks,
        head=MobileNetHead(model),
        layout="map",
        stages=grid_stages(stem, blocks, example),
        example_inputs=example,
        model=model,
        preprocess=_preprocess(identifier, options),
        family="mobilenet_v3",
    ).eval()  # like the model: pretrained networks start in eval mode
# --8<-- [end:anchor]


def load_mobilenet(
    identifier: str, options: MobileNetOptions, registries: stitchframe.Registries | None = None, *,
    structure_only: bool = False,
) -> stitchframe.Anchor:
    """The adapter: ``torchvision:<identifier>`` -> an anchor (it loads no other anchor: ``registries`` unused).

    With ``structure_only`` the model is built without its weights (nothing is
    downloaded): stitchframe asks for that, on the meta device, when it rebuilds
    an exported route and loads the route's own weights into it.
    """
    if structure_only:
        options = attrs.evolve(options, weights=None)  # same modules, no download
    return mobilenet_anchor(build_model(identifier, options), identifier, options)


# --8<-- [end:load]
