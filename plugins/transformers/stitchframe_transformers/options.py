"""Options of the ``hf:`` and ``hf-config:`` adapters (attrs only; importing them loads no model code)."""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["HFOptions", "HFConfigOptions"]

_v = attrs.validators


def _layers(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class HFOptions:
    """Options of the ``hf:`` adapter (``hf:<hub id | local folder | package:package/folder>``)."""

    head: Literal["auto", "hidden", "pooled", "classification", "lm"] = attrs.field(
        default="auto",
        validator=_v.in_(("auto", "hidden", "pooled", "classification", "lm")),
        metadata={
            "help": "Output of the anchor: hidden (last hidden states), pooled (masked mean, like "
            "sentence-transformers), classification (the model's *ForSequence/ImageClassification head), "
            "lm (causal-LM logits). auto: from the checkpoint's architecture; a sentence-transformers "
            "folder gives pooled, a decoder lm, anything else hidden."
        },
    )
    num_labels: int | None = attrs.field(
        default=None,
        validator=_v.optional([_v.instance_of(int), _v.ge(1)]),
        metadata={"help": "Classes of the classification head (a new head is initialised when it differs)."},
    )
    normalize: bool | None = attrs.field(
        default=None,
        metadata={"help": "L2-normalise pooled embeddings (default: as the sentence-transformers folder says)."},
    )
    layers: tuple[int, ...] | None = attrs.field(
        default=None,
        converter=_layers,
        metadata={"help": "Keep only these layers, in this order (e.g. [0, 2, 4]: every other layer)."},
    )
    tokenizer: str | None = attrs.field(
        default=None,
        metadata={"help": "Tokenizer id or folder for text data (default: the model's own folder or hub id)."},
    )
    max_length: int | None = attrs.field(
        default=None,
        validator=_v.optional([_v.instance_of(int), _v.ge(1)]),
        metadata={"help": "Maximum text length in tokens (default: 128, capped by the model's positions)."},
    )
    trace_length: int | None = attrs.field(
        default=None,
        validator=_v.optional([_v.instance_of(int), _v.ge(1)]),
        metadata={"help": "Sequence length at which FLOPs are counted (default: max_length)."},
    )
    attn_implementation: Literal["sdpa", "eager"] | None = attrs.field(
        default=None,
        validator=_v.optional(_v.in_(("sdpa", "eager"))),
        metadata={"help": "Attention implementation (default: transformers' choice, sdpa)."},
    )
    dtype: Literal["float32", "bfloat16", "float16"] = attrs.field(
        default="float32",
        validator=_v.in_(("float32", "bfloat16", "float16")),
        metadata={"help": "Parameter dtype to load the model in."},
    )
    revision: str | None = attrs.field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    interpolate_pos_encoding: bool = attrs.field(
        default=False, metadata={"help": "Image models: interpolate position embeddings for other input sizes."}
    )


@attrs.frozen(kw_only=True)
class HFConfigOptions(HFOptions):
    """Options of the ``hf-config:`` adapter (``hf-config:<model_type | config.json | folder>``, random weights)."""

    config: dict[str, Any] = attrs.field(
        factory=dict,
        metadata={"help": "Config fields (hidden_size, num_hidden_layers, ...); may include model_type."},
    )
    seed: int = attrs.field(default=0, validator=_v.instance_of(int), metadata={"help": "Seed of the random weights."})
