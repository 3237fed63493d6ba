"""The ``text_classification`` dataset.

Reads labelled texts from a CSV/TSV/JSONL file, or generates a small toy
sentiment task (templated reviews with negation: "the movie was not great" is
negative), tokenises every text once with the anchors' tokenizer (truncated,
not padded) and pads per batch in :class:`PadCollate`.  Items are
``({"input_ids", "attention_mask"[, "token_type_ids"]}, label)``; a batch is
``(dict of [B, L] tensors, labels [B])``, ready for HF anchors.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import stitchframe
from stitchframe import Preprocess, SpecError, StitchframeError, hub_offline_mode

from .data_options import TextClassificationOptions

__all__ = [
    "TOY_CLASSES",
    "TextDataset",
    "PadCollate",
    "toy_sentiment",
    "read_examples",
    "load_tokenizer",
    "build_text_datasets",
    "load_text_classification",
]

TOY_CLASSES = ("negative", "positive")
_SUBJECTS = ("the movie", "this film", "the book", "the food", "the service", "the hotel", "this phone",
             "the concert", "the game", "the show", "the lecture", "the trip")
_POSITIVE = ("good", "great", "excellent", "wonderful", "delightful", "brilliant", "pleasant", "superb",
             "lovely", "fantastic")
_NEGATIVE = ("bad", "terrible", "awful", "boring", "dreadful", "poor", "horrible", "disappointing", "dull",
             "mediocre")
_TEMPLATES = ("{s} was {a}", "{s} is really {a}", "i found {s} {a}", "honestly , {s} was {a} .",
              "everyone said {s} was {a}")


def toy_sentiment(n: int, seed: int = 0) -> list[tuple[str, str | None, int]]:
    """``n`` templated reviews ``(text, None, label)``; label 1 is positive, negation flips it."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.3
        adj = rng.choice(_POSITIVE if positive else _NEGATIVE)
        text = rng.choice(_TEMPLATES).format(s=rng.choice(_SUBJECTS), a=("not " if negated else "") + adj)
        out.append((text, None, int(positive != negated)))
    return out


class TextDataset(Dataset):
    """Tokenised texts with integer labels.

    Args:
        encodings: Per-example token lists by key (``input_ids``, ``attention_mask``, ...).
        labels: Integer labels.
    """

    def __init__(self, encodings: dict[str, list[list[int]]], labels: Sequence[int]) -> None:
        self.encodings = {k: [torch.tensor(v, dtype=torch.long) for v in vals] for k, vals in encodings.items()}
        self.labels = [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int]:
        return {k: v[i] for k, v in self.encodings.items()}, self.labels[i]


class PadCollate:
    """Pads a list of ``(encoding, label)`` items to the longest in the batch (right padding).

    Args:
        pad_id: Token id used for padding ``input_ids`` (masks and token types pad with 0).
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[dict[str, torch.Tensor], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        n = max(int(enc["input_ids"].shape[0]) for enc, _ in items)
        batch: dict[str, torch.Tensor] = {}
        for key in items[0][0]:
            fill = self.pad_id if key == "input_ids" else 0
            out = torch.full((len(items), n), fill, dtype=torch.long)
            for row, (enc, _) in enumerate(items):
                out[row, : enc[key].shape[0]] = enc[key]
            batch[key] = out
        return batch, torch.tensor([y for _, y in items], dtype=torch.long)


def _rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8", newline="") as fh:
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in (".jsonl", ".ndjson", ".json"):
            rows = []
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SpecError(f"data.options.path: {str(path)!r} line {line_no} is not JSON ({exc.msg})") from None
            return rows
    raise SpecError(f"data.options.path: {str(path)!r} must end in .csv, .tsv or .jsonl")


def read_examples(path: str, options: TextClassificationOptions, where: str) -> list[tuple[str, str | None, Any]]:
    """``(text, pair or None, raw label)`` from a file.

    Raises:
        SpecError: Missing file, unknown format, or a row without a needed field.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise SpecError(f"{where}: file {str(p)!r} does not exist")
    out = []
    for i, row in enumerate(_rows(p)):
        for field in (options.text_field, options.label_field, options.pair_field):
            if field is not None and row.get(field) in (None, ""):
                raise SpecError(
                    f"{where}: row {i + 1} of {str(p)!r} has no {field!r}; its fields are {sorted(row)} "
                    "(set data.options.text_field / label_field / pair_field)"
                )
        pair = row[options.pair_field] if options.pair_field else None
        out.append((str(row[options.text_field]), None if pair is None else str(pair), row[options.label_field]))
    if not out:
        raise SpecError(f"{where}: {str(p)!r} holds no examples")
    return out


def _label_index(raw: Sequence[Any]) -> tuple[list[int], tuple[str, ...]]:
    """Integer labels and class names: integers 0..K-1 stay; anything else is named and sorted."""
    if all(isinstance(y, int) or (isinstance(y, str) and y.strip().isdigit()) for y in raw):
        ints = [int(y) for y in raw]
        return ints, tuple(str(k) for k in range(max(ints) + 1))
    names = tuple(sorted({str(y) for y in raw}))
    index = {n: i for i, n in enumerate(names)}
    return [index[str(y)] for y in raw], names


def load_tokenizer(name: str) -> Any:
    """An ``AutoTokenizer`` for an id or folder (``package:`` locations accepted), with a pad token."""
    from transformers import AutoTokenizer

    from .adapter import resolve_location

    location, local = resolve_location(name, prefix="tokenizer")
    try:
        with hub_offline_mode(enabled=not local):  # no minute of retries without a network
            tok = AutoTokenizer.from_pretrained(location, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise StitchframeError(f"Cannot load tokenizer {name!r} ({str(exc).strip().splitlines()[0]})") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise SpecError(f"Tokenizer {name!r} has neither a pad nor an end-of-sequence token to pad with")
        tok.pad_token = tok.eos_token
    return tok


def _encode(tok: Any, examples: list[tuple[str, str | None, Any]], max_length: int) -> dict[str, list[list[int]]]:
    texts = [t for t, _, _ in examples]
    pairs = [p for _, p, _ in examples] if examples[0][1] is not None else None
    enc = tok(texts, pairs, truncation=True, max_length=max_length, padding=False)
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if pairs and "token_type_ids" in enc else [])
    return {k: enc[k] for k in keys}


def build_text_datasets(
    options: TextClassificationOptions, preprocess: Preprocess
) -> tuple[TextDataset, TextDataset, tuple[str, ...], PadCollate, str]:
    """The train and validation datasets, class names, collate function and a description.

    Raises:
        SpecError: No tokenizer known, bad files or fields.
    """
    name = options.tokenizer or preprocess.tokenizer
    if name is None:
        raise SpecError(
            "data.options.tokenizer: text_classification needs a tokenizer; set it, or load the anchors "
            "from a folder or hub id that has one"
        )
    tok = load_tokenizer(name)
    max_length = options.max_length or preprocess.max_length or 128
    if options.path is None:
        examples = toy_sentiment(options.toy_size, options.seed)
        classes, labels = TOY_CLASSES, [y for _, _, y in examples]
        what = f"toy sentiment task ({len(examples)} reviews)"
    else:
        examples = read_examples(options.path, options, "data.options.path")
        labels, classes = _label_index([y for _, _, y in examples])
        what = f"{options.path} ({len(examples)} examples)"
    order = list(range(len(examples)))
    if options.val_path is not None:
        val_ex = read_examples(options.val_path, options, "data.options.val_path")
        val_labels, val_classes = _label_index([y for _, _, y in val_ex])
        if not set(val_classes) <= set(classes):
            raise SpecError(f"data.options.val_path: classes {sorted(set(val_classes) - set(classes))} are not in the training file")
        val_labels = [classes.index(val_classes[y]) for y in val_labels]
        train_idx = order
    else:
        random.Random(options.seed).shuffle(order)
        n_val = max(1, round(len(order) * options.val_fraction))
        train_idx, val_idx = sorted(order[n_val:]), sorted(order[:n_val])
        val_ex, val_labels = [examples[i] for i in val_idx], [labels[i] for i in val_idx]
    train_ex, train_labels = [examples[i] for i in train_idx], [labels[i] for i in train_idx]
    train = TextDataset(_encode(tok, train_ex, max_length), train_labels)
    val = TextDataset(_encode(tok, val_ex, max_length), val_labels)
    return train, val, tuple(classes), PadCollate(tok.pad_token_id), f"{what}, tokenizer {name}, max_length {max_length}"


def load_text_classification(options: TextClassificationOptions, preprocess: Preprocess) -> Any:
    """The registered loader: :func:`build_text_datasets` as ``stitchframe.DatasetSplits``."""
    splits_cls = getattr(stitchframe, "DatasetSplits", None)
    if splits_cls is None:
        raise StitchframeError(
            "text_classification needs a stitchframe core with stitchframe.DatasetSplits; upgrade stitchframe"
        )
    train, val, classes, collate, description = build_text_datasets(options, preprocess)
    return splits_cls(
        train=train,
        val=val,
        num_classes=len(classes),
        classes=classes,
        modality="text",
        collate_fn=collate,
        description=description,
    )
