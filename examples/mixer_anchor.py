"""Cut timm's MLP-Mixer into a token-layout anchor.

The "Token models" section of tutorial 1 (docs/tutorials/adapter.md) shows this
file; tests/test_mixer_anchor_example.py checks it with
``stitchframe.testing.check_anchor`` and stitches two Mixers.  A plugin's
adapter would call :func:`mixer_anchor` on the model it built.
"""

from __future__ import annotations

import torch
from timm.models.mlp_mixer import MlpMixer
from torch import nn

import stitchframe


# --8<-- [start:head]
class MixerHead(nn.Module):
    """timm's ``forward_head`` of an MLP-Mixer: average the tokens, dropout, classifier."""

    def __init__(self, model: MlpMixer) -> None:
        super().__init__()
        self.global_pool = model.global_pool
        self.head_drop = model.head_drop
        self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        return self.head(self.head_drop(x))
# --8<-- [end:head]


# --8<-- [start:anchor]
def mixer_anchor(model: MlpMixer, name: str, img_size: int) -> stitchframe.Anchor:
    """Stem (patch embedding), the mixer blocks, the final norm and the head, sharing the model's weights."""
    example = torch.randn(1, 3, img_size, img_size)
    cfg = model.pretrained_cfg  # timm's preprocessing of the model's weights
    preprocess = stitchframe.Preprocess(
        input_size=(3, img_size, img_size),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
        crop_pct=cfg["crop_pct"],
    )
    return stitchframe.Anchor(
        name,
        stem=model.stem,  # timm's PatchEmbed: [B, H*W, C] tokens
        blocks=list(model.blocks),
        norm=model.norm,  # the final norm, kept apart so stitch.final_norm can choose
        head=MixerHead(model),
        layout="tokens",  # [B, prefix + H*W, C] at every cut point
        prefix=0,  # no class token; a ViT passes model.num_prefix_tokens
        grid=tuple(model.stem.grid_size),  # only needed when H*W is not a square
        stages=None,  # isotropic: every cut point in stage 0 (the default)
        example_inputs=example,
        model=model,
        preprocess=preprocess,
        family="mlp_mixer",
    ).eval()
# --8<-- [end:anchor]
