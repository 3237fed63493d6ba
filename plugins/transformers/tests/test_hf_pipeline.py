"""``stitchframe build`` end to end on text: dict inputs, a collate function, classifiers fitted by least squares."""

from __future__ import annotations

import json

import pytest
import torch
from hf_tiny import tiny_config

import stitchframe


def test_build_and_reload_a_text_snnet(hf_regs, minilm_dir, tmp_path):
    pytest.importorskip("stitchframe.pipeline")

    def anchor(name, width, depth, seed):
        cfg = tiny_config("bert", width=width, depth=depth, vocab_size=30522)
        options = {"config": cfg, "head": "classification", "num_labels": 2, "tokenizer": str(minilm_dir), "seed": seed}
        return {"source": "hf-config:bert", "name": name, "options": options}

    spec = stitchframe.parse_spec({
        "anchors": [anchor("small", 32, 2, 0), anchor("base", 48, 4, 1)],
        "stitch": {"space": "snnet"},
        "calibration": {"batches": 2, "heads": True},
        "data": {"name": "text_classification", "options": {"toy_size": 60}},
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 8},
        "eval": {"batch_size": 16},
    })
    res = stitchframe.build(spec, output=tmp_path / "out", registries=hf_regs)
    assert res.evaluation.block_forwards < res.evaluation.naive_block_forwards
    assert json.loads((tmp_path / "out" / "build.json").read_text())["data"]["num_classes"] == 2
    net = stitchframe.load_snnet(tmp_path / "out", hf_regs)
    again = stitchframe.evaluate_build(tmp_path / "out", registries=hf_regs)
    assert [r.accuracy for r in again.routes] == [r.accuracy for r in res.evaluation.routes]
    for a, b in zip(net.state_dict().values(), res.snnet.state_dict().values()):
        assert torch.equal(a, b)
