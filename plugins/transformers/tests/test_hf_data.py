"""The ``text_classification`` dataset."""

from __future__ import annotations

import json

import pytest
import torch
from stitchframe_transformers.data import (
    TOY_CLASSES,
    PadCollate,
    build_text_datasets,
    load_text_classification,
    toy_sentiment,
)
from stitchframe_transformers.data_options import TextClassificationOptions
from torch.utils.data import DataLoader

import stitchframe
from stitchframe import Preprocess, SpecError, structure_options


@pytest.fixture(scope="module")
def preprocess(minilm_dir):
    return Preprocess(modality="text", input_size=None, tokenizer=str(minilm_dir), max_length=16)


def _options(**kw):
    return structure_options(TextClassificationOptions, kw, "data.options")


def test_toy_task_is_deterministic_and_negation_flips_labels():
    a, b = toy_sentiment(200, seed=1), toy_sentiment(200, seed=1)
    assert a == b and a != toy_sentiment(200, seed=2)
    labels = [y for _, _, y in a]
    assert 60 < sum(labels) < 140  # roughly balanced
    for text, _, y in a:
        positive = any(w in text.split() for w in ("good", "great", "excellent", "wonderful", "delightful",
                                                  "brilliant", "pleasant", "superb", "lovely", "fantastic"))
        assert y == int(positive != (" not " in f" {text} "))


def test_toy_splits_tokenise_with_the_anchors_tokenizer(preprocess):
    train, val, classes, collate, description = build_text_datasets(_options(toy_size=100), preprocess)
    assert classes == TOY_CLASSES and len(train) == 80 and len(val) == 20
    assert "toy sentiment" in description and "max_length 16" in description
    enc, label = train[0]
    assert enc["input_ids"][0] == 101 and enc["input_ids"][-1] == 102  # [CLS] ... [SEP]
    assert set(enc) == {"input_ids", "attention_mask"} and label in (0, 1)
    inputs, labels = next(iter(DataLoader(train, batch_size=8, collate_fn=collate)))
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape and labels.shape == (8,)
    lengths = inputs["attention_mask"].sum(1)
    assert lengths.max() == inputs["input_ids"].shape[1]  # padded to the longest in the batch
    short = int(lengths.argmin())
    assert (inputs["input_ids"][short, lengths[short]:] == 0).all()


def test_pad_collate_pads_ids_masks_and_token_types():
    items = [({"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.tensor([1, 1, 1]),
               "token_type_ids": torch.tensor([0, 1, 1])}, 1),
             ({"input_ids": torch.tensor([8]), "attention_mask": torch.tensor([1]),
               "token_type_ids": torch.tensor([0])}, 0)]
    inputs, labels = PadCollate(pad_id=9)(items)
    assert inputs["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert inputs["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert labels.tolist() == [1, 0]


def test_csv_and_jsonl_files(preprocess, tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("sentence,tag\n" + "".join(f"text number {i},{'ham' if i % 3 else 'spam'}\n" for i in range(30)))
    val_path = tmp_path / "val.jsonl"
    val_path.write_text("".join(json.dumps({"sentence": f"held out {i}", "tag": "spam"}) + "\n" for i in range(4)))
    opts = _options(path=str(csv_path), val_path=str(val_path), text_field="sentence", label_field="tag")
    train, val, classes, _, _ = build_text_datasets(opts, preprocess)
    assert classes == ("ham", "spam") and len(train) == 30 and len(val) == 4
    assert train.labels[:3] == [1, 0, 0] and val.labels == [1, 1, 1, 1]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"a": "one", "b": "two", "label": i % 2}) + "\n" for i in range(10)))
    train, val, classes, _, _ = build_text_datasets(_options(path=str(pairs), text_field="a", pair_field="b"),
                                                    preprocess)
    assert classes == ("0", "1") and len(train) + len(val) == 10
    assert "token_type_ids" in train[0][0] and train[0][0]["token_type_ids"].max() == 1


def test_file_errors_name_the_field_and_the_fix(preprocess, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,1\n,0\n")
    with pytest.raises(SpecError, match=r"row 2 .* has no 'text'"):
        build_text_datasets(_options(path=str(bad)), preprocess)
    with pytest.raises(SpecError, match="does not exist"):
        build_text_datasets(_options(path=str(tmp_path / "missing.csv")), preprocess)
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(SpecError, match=r"\.csv, \.tsv or \.jsonl"):
        build_text_datasets(_options(path=str(tmp_path / "x.parquet")), preprocess)
    with pytest.raises(SpecError, match="needs a tokenizer"):
        build_text_datasets(_options(), Preprocess(modality="text", input_size=None))
    with pytest.raises(SpecError, match="data.options.val_fraction"):
        _options(val_fraction=1.5)


def test_registered_loader_returns_dataset_splits(preprocess, hf_regs):
    if not hasattr(stitchframe, "DatasetSplits"):
        pytest.skip("this stitchframe core has no DatasetSplits yet")
    entry = hf_regs.datasets.get("text_classification")
    splits = entry.obj(_options(toy_size=50), preprocess)
    assert isinstance(splits, stitchframe.DatasetSplits)
    assert splits.num_classes == 2 and splits.modality == "text" and splits.collate_fn is not None
    assert load_text_classification is not None


def test_a_batch_runs_through_an_hf_anchor(preprocess, hf_regs, minilm_dir):
    train, _, _, collate, _ = build_text_datasets(_options(toy_size=20), preprocess)
    inputs, _ = collate([train[i] for i in range(4)])
    anchor = stitchframe.load_anchor(f"hf:{minilm_dir}", hf_regs)
    with torch.no_grad():
        assert anchor(inputs).shape == (4, 384)
