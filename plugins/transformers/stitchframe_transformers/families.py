"""Supported Hugging Face families and how each is cut into an anchor.

A :class:`Family` says where a model type keeps its embeddings, layers, final
norm and task heads, and which layout its activations have:

=================  ========  ========  ======  ===========================================
model_type         modality  layout    prefix  context (built once per input)
=================  ========  ========  ======  ===========================================
bert, roberta,     text      sequence  -       padding mask -> bidirectional attention mask
distilbert
vit                image     tokens    1       none
deit               image     tokens    2       none
gpt2               text      sequence  -       causal mask, position ids
llama              text      sequence  -       causal mask, position ids, rotary (cos, sin)
=================  ========  ========  ======  ===========================================

Heads (the ``head`` option): ``hidden`` (last hidden states), ``pooled``
(masked mean, optionally L2-normalised), ``classification`` (the model's
``*For*Classification`` head) and ``lm`` (causal-LM logits, decoders only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from torch import nn

from stitchframe import SpecError

from .modules import (
    GPT2Stem,
    HFBlock,
    HiddenHead,
    LastTokenHead,
    LMHead,
    PooledHead,
    TextContext,
    TextStem,
    TokenClassifierHead,
    VisionStem,
)

__all__ = ["Family", "FAMILIES", "HEADS", "family_of", "AnchorParts", "cut_model"]

HEADS = ("hidden", "pooled", "classification", "lm")


@attrs.frozen(kw_only=True)
class Family:
    """Where one model type keeps its parts.

    Attributes:
        name: The ``model_type``.
        modality: ``"text"`` or ``"image"``.
        causal: Decoder-only (causal masks; the ``lm`` head exists).
        layers: Attribute path of the layer list inside the base model
            (alternatives separated by ``|``, first match wins).
        norm: Attribute path of the final norm in the base model, if any.
        rotary: Attribute path of the rotary-embedding module, if any.
        prefix: Prefix tokens (image models).
        stem: Builds the stem from ``(base_model, options)``.
        classifier: Builds the classification head from ``(model, base_model)``.
    """

    name: str
    modality: str
    causal: bool = False
    layers: str
    norm: str | None = None
    rotary: str | None = None
    prefix: int = 0
    stem: Callable[[nn.Module, Any], nn.Module]
    classifier: Callable[[nn.Module, nn.Module], nn.Module]


def _bert_cls(model, base):
    return TokenClassifierHead("bert", pooler=base.pooler, dropout=model.dropout, classifier=model.classifier)


def _distilbert_cls(model, base):
    return TokenClassifierHead(
        "distilbert", pre_classifier=model.pre_classifier, dropout=model.dropout, classifier=model.classifier
    )


def _vision_cls(model, base):
    if hasattr(model, "distillation_classifier"):
        return TokenClassifierHead(
            "deit_teacher", cls_classifier=model.cls_classifier, distillation_classifier=model.distillation_classifier
        )
    return TokenClassifierHead("token0", classifier=model.classifier)


def _vision_stem(base, options):
    return VisionStem(base.embeddings, options.interpolate_pos_encoding)


def _last_token_cls(model, base):
    return LastTokenHead(model.score)


FAMILIES: dict[str, Family] = {
    "bert": Family(
        name="bert",
        modality="text",
        layers="encoder.layer",
        stem=lambda base, o: TextStem(base.embeddings, "bert"),
        classifier=_bert_cls,
    ),
    "roberta": Family(
        name="roberta",
        modality="text",
        layers="encoder.layer",
        stem=lambda base, o: TextStem(base.embeddings, "bert"),
        classifier=lambda model, base: TokenClassifierHead("roberta", classifier=model.classifier),
    ),
    "distilbert": Family(
        name="distilbert",
        modality="text",
        layers="transformer.layer",
        stem=lambda base, o: TextStem(base.embeddings, "distilbert"),
        classifier=_distilbert_cls,
    ),
    "vit": Family(
        name="vit",
        modality="image",
        layers="layers|encoder.layer",
        norm="layernorm",
        prefix=1,
        stem=_vision_stem,
        classifier=_vision_cls,
    ),
    "deit": Family(
        name="deit",
        modality="image",
        layers="layers|encoder.layer",
        norm="layernorm",
        prefix=2,
        stem=_vision_stem,
        classifier=_vision_cls,
    ),
    "gpt2": Family(
        name="gpt2",
        modality="text",
        causal=True,
        layers="h",
        norm="ln_f",
        stem=lambda base, o: GPT2Stem(base.wte, base.wpe, base.drop),
        classifier=_last_token_cls,
    ),
    "llama": Family(
        name="llama",
        modality="text",
        causal=True,
        layers="layers",
        norm="norm",
        rotary="rotary_emb",
        stem=lambda base, o: TextStem(base.embed_tokens, "tokens"),
        classifier=_last_token_cls,
    ),
}


def family_of(model_type: str, where: str) -> Family:
    """The family of a ``model_type``, or a :class:`SpecError` listing the supported ones."""
    fam = FAMILIES.get(model_type)
    if fam is None:
        raise SpecError(
            f"Model type {model_type!r} at {where} is not supported by stitchframe-transformers; "
            f"supported: {', '.join(sorted(FAMILIES))}."
        )
    return fam


def _get(obj: Any, path: str) -> Any:
    for alt in path.split("|"):
        cur = obj
        try:
            for part in alt.split("."):
                cur = getattr(cur, part)
        except AttributeError:
            continue
        return cur
    raise AttributeError(f"{type(obj).__name__} has no {path.replace('|', ' or ')}")


@attrs.frozen(kw_only=True)
class AnchorParts:
    """What :class:`stitchframe.Anchor` is built from."""

    stem: nn.Module
    blocks: list[nn.Module]
    norm: nn.Module | None
    head: nn.Module
    prepare: nn.Module | None
    layout: str
    prefix: int


def _head(fam: Family, head: str, model: nn.Module, base: nn.Module, normalize: bool) -> nn.Module:
    if head == "hidden":
        return HiddenHead()
    if head == "pooled":
        return PooledHead(prefix=fam.prefix, normalize=normalize)
    if head == "lm":
        return LMHead(model.get_output_embeddings())
    return fam.classifier(model, base)


def cut_model(
    model: nn.Module, fam: Family, head: str, options: Any, *, normalize: bool = False, source: str = ""
) -> AnchorParts:
    """Cut a loaded model (of the class matching ``head``) into anchor parts.

    Args:
        model: The Hugging Face model (``BertModel``, ``LlamaForCausalLM``, ...).
        fam: Its family.
        head: One of :data:`HEADS`.
        options: The adapter options (``layers``, ``interpolate_pos_encoding``).
        normalize: L2-normalise pooled embeddings.
        source: The anchor's source, for error messages.

    Raises:
        SpecError: ``options.layers`` names a layer the model lacks.
    """
    base = model.base_model
    layers = list(_get(base, fam.layers))
    keep = list(options.layers) if options.layers is not None else list(range(len(layers)))
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad or not keep:
        raise SpecError(
            f"{source}: options.layers {list(options.layers)!r} must pick at least one of the model's "
            f"layers 0..{len(layers) - 1}"
        )
    prepare = None
    if fam.modality == "text":
        rotary = _get(base, fam.rotary) if fam.rotary else None
        prepare = TextContext(model.config, causal=fam.causal, rotary=rotary)
    return AnchorParts(
        stem=fam.stem(base, options),
        blocks=[HFBlock(layers[i]) for i in keep],
        norm=_get(base, fam.norm) if fam.norm else None,
        head=_head(fam, head, model, base, normalize),
        prepare=prepare,
        layout="sequence" if fam.modality == "text" else "tokens",
        prefix=fam.prefix,
    )
