"""Vision transformers: timm's ``VisionTransformer`` and DeiT's ``VisionTransformerDistilled``.

Covers ViT (``vit_*``), DeiT (``deit_*``), DeiT III (``deit3_*``, position
embeddings that skip the prefix tokens), register-token ViTs (``*_reg*``) and
distilled DeiT (``deit_*_distilled_*``, class and distillation tokens, the
two heads averaged).

Cut: the stem is patch embedding + prefix tokens + position embedding
(+ patch dropout and pre-norm), the blocks are ``model.blocks``, the final
norm is ``model.norm`` (absent on ``global_pool='avg'`` models, whose norm
is ``fc_norm`` after pooling and so part of the head), and the head is
pooling + ``fc_norm`` + classifier.  Activations are ``tokens`` with
``model.num_prefix_tokens`` prefix tokens (cls, registers, distillation).

The stem and head are small modules holding references to the model's own
submodules and parameters, never the whole model, so an exported route
holds only its own weights.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer, global_pool_nlc
from torch import nn

from .family import Cut, Family

__all__ = ["FAMILY", "DistilledHead", "ViTHead", "ViTStem"]


class ViTStem(nn.Module):
    """Patch embedding, prefix tokens and position embedding of a timm ViT.

    Computes what ``VisionTransformer`` does before its blocks
    (``patch_embed``, ``_pos_embed``, ``patch_drop``, ``norm_pre``) in the
    same order of operations.

    Args:
        model: A timm ``VisionTransformer`` (or the distilled DeiT); only its
            submodules and parameters are kept.
    """

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.patch_embed = model.patch_embed
        self.cls_token = model.cls_token
        self.reg_token = model.reg_token
        self.dist_token = getattr(model, "dist_token", None)
        self.distilled = isinstance(model, VisionTransformerDistilled)
        self.pos_embed = model.pos_embed
        self.pos_drop = model.pos_drop
        self.patch_drop = model.patch_drop
        self.norm_pre = model.norm_pre
        self.no_embed_class = model.no_embed_class
        self.dynamic_img_size = model.dynamic_img_size
        self.num_prefix_tokens = model.num_prefix_tokens

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        if self.distilled:
            return [self.cls_token.expand(batch, -1, -1), self.dist_token.expand(batch, -1, -1)]
        out = []
        if self.cls_token is not None:
            out.append(self.cls_token.expand(batch, -1, -1))
        if self.reg_token is not None:
            out.append(self.reg_token.expand(batch, -1, -1))
        return out

    def _add_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        to_cat = self._prefix_tokens(x.shape[0])
        if self.pos_embed is None:
            return torch.cat(to_cat + [x.view(x.shape[0], -1, x.shape[-1])], dim=1)
        pos_embed = self.pos_embed
        if self.dynamic_img_size:
            b, h, w, c = x.shape
            pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                new_size=(h, w),
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
            )
            x = x.view(b, -1, c)
        if self.no_embed_class:
            x = x + pos_embed
            if to_cat:
                x = torch.cat(to_cat + [x], dim=1)
        else:
            if to_cat:
                x = torch.cat(to_cat + [x], dim=1)
            x = x + pos_embed
        return self.pos_drop(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._add_pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)


class ViTHead(nn.Module):
    """Pooling, ``fc_norm``, head dropout and classifier of a timm ViT (``forward_head``).

    Args:
        model: A timm ``VisionTransformer``.
    """

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.attn_pool = model.attn_pool
        self.fc_norm = model.fc_norm
        self.head_drop = model.head_drop
        self.head = model.head
        self.global_pool = model.global_pool
        self.num_prefix_tokens = model.num_prefix_tokens
        self.pool_include_prefix = model.pool_include_prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is not None:
            if not self.pool_include_prefix:
                x = x[:, self.num_prefix_tokens :]
            x = self.attn_pool(x)
        else:
            x = global_pool_nlc(
                x,
                pool_type=self.global_pool,
                num_prefix_tokens=self.num_prefix_tokens,
                reduce_include_prefix=self.pool_include_prefix,
            )
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return self.head(x)


class DistilledHead(nn.Module):
    """DeiT's two heads: class token and distillation token, averaged (as timm does in eval).

    In training with ``distilled_training`` set (copied from the model) it
    returns both logits, as timm does.

    Args:
        model: A timm ``VisionTransformerDistilled``.
    """

    def __init__(self, model: VisionTransformerDistilled) -> None:
        super().__init__()
        self.head_drop = model.head_drop
        self.head = model.head
        self.head_dist = model.head_dist
        self.distilled_training = model.distilled_training

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, x_dist = x[:, 0], x[:, 1]
        x = self.head(self.head_drop(x))
        x_dist = self.head_dist(self.head_drop(x_dist))
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2


def cut(model: VisionTransformer) -> Cut:
    """Cut a timm ViT/DeiT into stem, blocks, final norm and head."""
    head = DistilledHead(model) if isinstance(model, VisionTransformerDistilled) else ViTHead(model)
    norm = None if isinstance(model.norm, nn.Identity) else model.norm
    return Cut(
        stem=ViTStem(model),
        blocks=list(model.blocks),
        head=head,
        norm=norm,
        layout="tokens",
        prefix=model.num_prefix_tokens,
        grid=tuple(model.patch_embed.grid_size),
        stages=[0] * (len(model.blocks) + 1),
    )


FAMILY = Family(
    name="vision_transformer",
    describe="VisionTransformer (vit_*, deit_*, deit3_*, register-token ViTs) and VisionTransformerDistilled "
    "(deit_*_distilled_*)",
    claims=lambda m: type(m) in (VisionTransformer, VisionTransformerDistilled),
    cut=cut,
)
