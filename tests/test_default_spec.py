"""The embedded default spec (examples/default.yaml) stays valid."""

from __future__ import annotations

from pathlib import Path

import pytest

import stitchframe
from stitchframe import load_spec

DEFAULT = Path(__file__).resolve().parents[1] / "examples" / "default.yaml"


def test_default_spec_parses_and_falls_back_to_digits():
    spec = load_spec(DEFAULT)
    assert [a.source for a in spec.anchors] == [f"timm:tf_efficientnet_lite{i}" for i in range(3)]
    assert all(a.options["num_classes"] == 10 and a.options["img_size"] == spec.data.img_size for a in spec.anchors)
    assert spec.data.name == "fashion_mnist" and spec.data.options["fallback"] == "digits"
    assert spec.calibration.heads and "batchnorm" in spec.train.freeze


def test_default_spec_validates_against_the_timm_plugin(pm):
    plugin = pytest.importorskip("stitchframe_timm")
    pm.register_plugin(plugin, name="timm")
    regs = stitchframe.load_registries(pm)
    assert stitchframe.validate_spec(load_spec(DEFAULT), regs) == []
