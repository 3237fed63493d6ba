"""The pieces an HF anchor is cut into: context, stems, blocks and heads.

Every module here wraps submodules of the original Hugging Face model (never
copies), so an anchor shares the model's parameters and its anchor route
computes exactly what the model computes.

Text families build a per-input :class:`HFContext` once (``prepare``): the
padding mask, the 4-D attention mask in the form the model's attention
implementation expects (made by transformers' own ``create_bidirectional_mask``
/ ``create_causal_mask``), position ids, and for rotary families the
``(cos, sin)`` tables.  Every stem, block and head of the route receives it.
Image families (ViT, DeiT) need no context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from stitchframe import ShapeMismatchError

__all__ = [
    "HFContext",
    "TextContext",
    "TextStem",
    "GPT2Stem",
    "VisionStem",
    "HFBlock",
    "HiddenHead",
    "PooledHead",
    "LMHead",
    "TokenClassifierHead",
    "LastTokenHead",
    "text_inputs",
]


def text_inputs(inputs: Any) -> Mapping[str, torch.Tensor]:
    """Check that text inputs are a mapping with ``input_ids`` (a tokenizer's output)."""
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        got = type(inputs).__name__
        raise ShapeMismatchError(
            f"Hugging Face text anchors take a mapping with 'input_ids' (and 'attention_mask'), got {got}; "
            "pass the tokenizer's output, e.g. tokenizer(texts, padding=True, return_tensors='pt')"
        )
    return inputs


class HFContext:
    """Per-input context of a text anchor.

    Attributes:
        padding_mask: The ``[B, L]`` attention mask from the inputs (1: token), or ``None``.
        position_ids: Position ids (``[1, L]`` or ``[B, L]``), or ``None`` (the embeddings' default).
        layer_kwargs: Keyword arguments every layer receives (``attention_mask``
            in the attention implementation's format, ``position_ids``,
            ``position_embeddings``).
    """

    __slots__ = ("padding_mask", "position_ids", "layer_kwargs")

    def __init__(self, padding_mask, position_ids, layer_kwargs: dict[str, Any]) -> None:
        self.padding_mask = padding_mask
        self.position_ids = position_ids
        self.layer_kwargs = layer_kwargs


class TextContext(nn.Module):
    """Builds the :class:`HFContext` of a text model from its inputs.

    Args:
        config: The model's config (its ``_attn_implementation`` decides the mask format).
        causal: Decoder-only model (causal mask, default position ids ``0..L-1``).
        rotary: The model's rotary-embedding module (Llama family), or ``None``.
    """

    def __init__(self, config: Any, *, causal: bool, rotary: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.rotary = rotary
        # An empty float buffer follows the module's dtype and device (`.to()`, `.half()`).
        self.register_buffer("dtype_probe", torch.empty(0), persistent=False)

    def forward(self, inputs: Any) -> HFContext:
        inputs = text_inputs(inputs)
        ids = inputs["input_ids"]
        mask2d = inputs.get("attention_mask")
        positions = inputs.get("position_ids")
        b, n = ids.shape
        # The mask helpers read only the batch size, length, dtype and device of the embeddings.
        probe = torch.empty((b, n, 0), dtype=self.dtype_probe.dtype, device=ids.device)
        kwargs: dict[str, Any] = {}
        if self.causal:
            if positions is None:
                positions = torch.arange(n, device=ids.device).unsqueeze(0)
            kwargs["attention_mask"] = create_causal_mask(
                config=self.config, inputs_embeds=probe, attention_mask=mask2d, cache=None, position_ids=positions
            )
            kwargs["position_ids"] = positions
            if self.rotary is not None:
                kwargs["position_embeddings"] = self.rotary(probe, positions)
        else:
            kwargs["attention_mask"] = create_bidirectional_mask(
                config=self.config, inputs_embeds=probe, attention_mask=mask2d
            )
        return HFContext(mask2d, positions, kwargs)


class TextStem(nn.Module):
    """Token embeddings of a text model.

    Args:
        embeddings: The model's embedding module.
        style: ``"bert"`` (BERT, RoBERTa: ids, token types, positions),
            ``"distilbert"`` (ids, positions) or ``"tokens"`` (a plain
            ``nn.Embedding``: Llama).
    """

    def __init__(self, embeddings: nn.Module, style: str) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.style = style

    def forward(self, inputs: Any, ctx: HFContext) -> torch.Tensor:
        ids = text_inputs(inputs)["input_ids"]
        if self.style == "bert":
            return self.embeddings(
                input_ids=ids, token_type_ids=inputs.get("token_type_ids"), position_ids=ctx.position_ids
            )
        if self.style == "distilbert":
            return self.embeddings(ids, None, ctx.position_ids)
        return self.embeddings(ids)


class GPT2Stem(nn.Module):
    """GPT-2's token plus learned position embeddings, then dropout."""

    def __init__(self, wte: nn.Embedding, wpe: nn.Embedding, drop: nn.Module) -> None:
        super().__init__()
        self.wte = wte
        self.wpe = wpe
        self.drop = drop

    def forward(self, inputs: Any, ctx: HFContext) -> torch.Tensor:
        inputs = text_inputs(inputs)
        x = self.wte(inputs["input_ids"]) + self.wpe(ctx.position_ids)
        token_types = inputs.get("token_type_ids")
        if token_types is not None:
            x = x + self.wte(token_types)
        return self.drop(x)


class VisionStem(nn.Module):
    """Patch embeddings with prefix tokens and position embeddings (ViT, DeiT).

    Args:
        embeddings: The model's embeddings module.
        interpolate_pos_encoding: Interpolate position embeddings for other image sizes.
    """

    def __init__(self, embeddings: nn.Module, interpolate_pos_encoding: bool = False) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.interpolate_pos_encoding = interpolate_pos_encoding

    def forward(self, inputs: Any) -> torch.Tensor:
        pixels = inputs["pixel_values"] if isinstance(inputs, Mapping) else inputs
        weight = self.embeddings.patch_embeddings.projection.weight
        return self.embeddings(pixels.to(weight.dtype), interpolate_pos_encoding=self.interpolate_pos_encoding)


class HFBlock(nn.Module):
    """One transformer layer, called with the context's layer arguments.

    Args:
        layer: The model's layer module (``BertLayer``, ``LlamaDecoderLayer``, ...).
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, ctx: HFContext | None = None) -> torch.Tensor:
        out = self.layer(x) if ctx is None else self.layer(x, **ctx.layer_kwargs)
        return out[0] if isinstance(out, tuple) else out


def _mask_of(ctx: HFContext | None) -> torch.Tensor | None:
    return None if ctx is None else ctx.padding_mask


class HiddenHead(nn.Module):
    """The last hidden states themselves (``[B, L, C]``), after the final norm."""

    def forward(self, x: torch.Tensor, ctx: HFContext | None = None) -> torch.Tensor:
        return x


class PooledHead(nn.Module):
    """Mean of the hidden states over valid positions, as sentence-transformers pools.

    Args:
        prefix: Leading prefix tokens excluded from the mean (image models).
        normalize: L2-normalise the embedding (sentence-transformers' ``Normalize``).
    """

    def __init__(self, prefix: int = 0, normalize: bool = False) -> None:
        super().__init__()
        self.prefix = prefix
        self.normalize = normalize

    def forward(self, x: torch.Tensor, ctx: HFContext | None = None) -> torch.Tensor:
        x = x[:, self.prefix :]
        mask = _mask_of(ctx)
        if mask is None:
            pooled = x.mean(dim=1)
        else:
            m = mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled


class LMHead(nn.Module):
    """Causal-LM logits ``[B, L, vocab]``."""

    def __init__(self, lm_head: nn.Module) -> None:
        super().__init__()
        self.lm_head = lm_head

    def forward(self, x: torch.Tensor, ctx: HFContext | None = None) -> torch.Tensor:
        return self.lm_head(x)


class TokenClassifierHead(nn.Module):
    """Classification from prefix tokens, as the model's ``*For*Classification`` head computes it.

    Args:
        style: ``"bert"`` (pooler, dropout, classifier on token 0),
            ``"roberta"`` (the model's classification head, which reads
            token 0), ``"distilbert"`` (pre-classifier, ReLU, dropout,
            classifier on token 0), ``"token0"`` (classifier on token 0: ViT,
            DeiT) or ``"deit_teacher"`` (mean of the cls and distillation
            classifiers on tokens 0 and 1).
        modules: The head's submodules by name (``pooler``, ``dropout``,
            ``classifier``, ``pre_classifier``, ``cls_classifier``,
            ``distillation_classifier``).
    """

    def __init__(self, style: str, **modules: nn.Module) -> None:
        super().__init__()
        self.style = style
        for name, mod in modules.items():
            self.add_module(name, mod)

    def forward(self, x: torch.Tensor, ctx: HFContext | None = None) -> torch.Tensor:
        if self.style == "bert":
            return self.classifier(self.dropout(self.pooler(x)))
        if self.style == "roberta":
            return self.classifier(x)
        if self.style == "distilbert":
            return self.classifier(self.dropout(F.relu(self.pre_classifier(x[:, 0]))))
        if self.style == "deit_teacher":
            return (self.cls_classifier(x[:, 0]) + self.distillation_classifier(x[:, 1])) / 2
        return self.classifier(x[:, 0])


class LastTokenHead(nn.Module):
    """Decoder sequence classification: the score of the last valid token of each row.

    Equals ``*ForSequenceClassification`` of GPT-2 and Llama when padding
    tokens are exactly the positions with attention mask 0.
    """

    def __init__(self, score: nn.Module) -> None:
        super().__init__()
        self.score = score

    def forward(self, x: torch.Tensor, ctx: HFContext | None = None) -> torch.Tensor:
        logits = self.score(x)
        mask = _mask_of(ctx)
        if mask is None:
            return logits[:, -1]
        idx = torch.arange(mask.shape[1], device=logits.device)
        last = (idx * (mask.to(logits.device) != 0).to(torch.long)).argmax(dim=-1)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]
