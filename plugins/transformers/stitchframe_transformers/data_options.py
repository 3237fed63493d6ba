"""Options of the ``text_classification`` dataset (attrs only; importing them loads no tokenizer code)."""

from __future__ import annotations

import attrs

__all__ = ["TextClassificationOptions"]

_v = attrs.validators


@attrs.frozen(kw_only=True)
class TextClassificationOptions:
    """Options of the ``text_classification`` dataset."""

    path: str | None = attrs.field(
        default=None,
        metadata={"help": "Training file: .csv, .tsv or .jsonl (one JSON object per line). "
                          "Unset: the built-in toy sentiment task."},
    )
    val_path: str | None = attrs.field(
        default=None, metadata={"help": "Validation file (default: a seeded val_fraction of the training file)."}
    )
    val_fraction: float = attrs.field(
        default=0.2, validator=[_v.gt(0.0), _v.lt(1.0)], metadata={"help": "Share held out when val_path is unset."}
    )
    text_field: str = attrs.field(default="text", metadata={"help": "Column/key holding the text."})
    pair_field: str | None = attrs.field(
        default=None, metadata={"help": "Column/key of a second text (sentence-pair tasks)."}
    )
    label_field: str = attrs.field(
        default="label", metadata={"help": "Column/key of the label (class name or integer 0..K-1)."}
    )
    tokenizer: str | None = attrs.field(
        default=None,
        metadata={"help": "Tokenizer id or folder (hf: locations accepted); default: the anchors' tokenizer."},
    )
    max_length: int | None = attrs.field(
        default=None,
        validator=_v.optional([_v.instance_of(int), _v.ge(2)]),
        metadata={"help": "Truncate to this many tokens (default: the anchors' max_length)."},
    )
    toy_size: int = attrs.field(
        default=1000, validator=[_v.instance_of(int), _v.ge(10)], metadata={"help": "Examples of the toy task."}
    )
    seed: int = attrs.field(default=0, validator=_v.instance_of(int), metadata={"help": "Seed of splits and toy data."})
