"""examples/mixer_anchor.py, tutorial 1's token-layout anchor, conforms and stitches (needs timm)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

import stitchframe
from stitchframe.testing import check_anchor, check_stitch_space

timm = pytest.importorskip("timm")

_SPEC = importlib.util.spec_from_file_location(
    "mixer_anchor", Path(__file__).resolve().parents[1] / "examples" / "mixer_anchor.py"
)
mixer_anchor = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mixer_anchor)

IMG = 64  # 4x4 tokens for patch 16, 2x2 for patch 32


def _mixer(model_name: str, name: str) -> tuple[torch.nn.Module, stitchframe.Anchor]:
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, img_size=IMG, num_classes=10).eval()
    return model, mixer_anchor.mixer_anchor(model, name, IMG)


@pytest.fixture(scope="module")
def s16():
    return _mixer("mixer_s16_224", "s16")


@pytest.fixture(scope="module")
def s32():
    return _mixer("mixer_s32_224", "s32")


def test_mixer_anchor_conforms(s16):
    model, anchor = s16
    check_anchor(anchor, model=model, inputs=torch.randn(2, 3, IMG, IMG))
    spec = anchor.graph.spec_at(3)
    assert (spec.layout, spec.prefix, spec.grid, spec.channels) == ("tokens", 0, (4, 4), 512)
    assert {anchor.graph.stage_at(p) for p in anchor.graph.positions()} == {0}
    assert anchor.norm is model.norm
    assert anchor.preprocess.input_size == (3, IMG, IMG) and anchor.preprocess.mean == (0.5, 0.5, 0.5)


def test_snnet_warns_when_grids_never_match_and_same_grid_false_stitches(s16, s32):
    snnet = stitchframe.load_registries().stitch_spaces.get("snnet").obj
    anchors = [s32[1], s16[1]]
    with pytest.warns(UserWarning, match="No stitch from anchor 's32' into 's16': their activation grids never match"):
        routes = list(snnet().routes(anchors, lambda *a: True))
    assert all(r.is_anchor for r in routes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        routes = check_stitch_space(snnet, anchors, snnet.Options(same_grid=False))
    stitched = [r for r in routes if not r.is_anchor]
    assert stitched and {r.anchors for r in stitched} == {("s32", "s16")}
