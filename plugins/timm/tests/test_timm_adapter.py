"""The plugin's registration, options, preprocessing and error messages."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import attrs
import pytest
import stitchframe_timm
import torch
from stitchframe_timm import TimmOptions

import stitchframe

TINY_VIT = {"img_size": 32, "model_kwargs": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}}


def test_hook_stitchframe_register_anchor_adapters(timm_regs):
    entry = timm_regs.anchor_adapters.get("timm")
    assert entry.plugin == "timm"
    assert entry.options is TimmOptions
    assert entry.obj is stitchframe_timm.load_timm_anchor
    assert not timm_regs.problems


def test_entry_point_is_declared():
    eps = importlib.metadata.entry_points(group="stitchframe")
    assert any(ep.name == "timm" and ep.value == "stitchframe_timm" for ep in eps)
    regs = stitchframe.load_registries(stitchframe.get_plugin_manager())
    assert regs.anchor_adapters.origin("timm") == "timm"


def test_every_option_has_help():
    for field in attrs.fields(TimmOptions):
        assert field.metadata.get("help"), field.name


def test_load_through_spec_yaml(tmp_path, timm_regs):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        """
anchors:
  - source: timm:deit_tiny_patch16_224
    name: tiny
    options: {img_size: 32, num_classes: 7, model_kwargs: {patch_size: 8, embed_dim: 48, depth: 2, num_heads: 3}}
  - source: timm:resnet18
    options: {img_size: 32, num_classes: 7}
stitch: {space: anchors}
""",
        encoding="utf-8",
    )
    net = stitchframe.assemble(stitchframe.load_spec(spec_file), timm_regs).eval()
    assert sorted(net.anchors) == ["resnet18", "tiny"]
    assert net.anchors["tiny"].source == "timm:deit_tiny_patch16_224"
    assert net.anchors["resnet18"].family == "resnet"
    x = torch.randn(2, 3, 32, 32)
    for route in net.routes:
        assert net.forward_route(x, route).shape == (2, 7)


def test_num_classes_and_drop_path_rate(load):
    a = load("timm:deit_tiny_patch16_224", num_classes=3, drop_path_rate=0.2, **TINY_VIT)
    assert a.head.head.out_features == 3
    assert a.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


def test_model_kwargs_reach_timm(load):
    a = load("timm:vit_small_patch16_224", img_size=32, model_kwargs={"patch_size": 8, "depth": 3, "reg_tokens": 2})
    assert a.depth == 3
    assert a.graph.spec_at(0).prefix == 3
    assert a.graph.spec_at(0).grid == (4, 4)


@pytest.mark.parametrize(
    ("source", "size", "mean", "interp", "crop"),
    [
        ("timm:deit_tiny_patch16_224", 224, (0.485, 0.456, 0.406), "bicubic", 0.9),
        ("timm:tf_efficientnet_lite0", 224, (0.5, 0.5, 0.5), "bicubic", 0.875),
        ("timm:tf_efficientnet_lite2", 260, (0.5, 0.5, 0.5), "bicubic", 0.89),
    ],
)
def test_preprocess_from_timm_data_config(load, source, size, mean, interp, crop):
    a = load(source) if "lite" in source else load(source, model_kwargs={"depth": 1})
    pp = a.preprocess
    assert pp.input_size == (3, size, size)
    assert pp.mean == pytest.approx(mean)
    assert (pp.interpolation, pp.crop_pct) == (interp, pytest.approx(crop))
    assert tuple(a.example_inputs.shape) == (1, 3, size, size)


def test_img_size_overrides_preprocess_and_example(load):
    a = load("timm:tf_efficientnet_lite2", img_size=64)
    assert a.preprocess.input_size == (3, 64, 64)
    assert a.graph.spec_at(0).grid == (32, 32)
    vit = load("timm:deit_tiny_patch16_224", **TINY_VIT)
    assert vit.preprocess.input_size == (3, 32, 32)


def test_unknown_model_name_suggests_close_matches(load):
    with pytest.raises(stitchframe.UnknownNameError) as info:
        load("timm:deit_tinny_patch16_224")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'deit_tinny_patch16_224'" in msg and "deit_tiny_patch16_224" in msg
    assert "timm.list_models" in msg


def test_the_name_list_read_from_timms_sources_is_its_registry():
    """validate reads timm's model names from its source files (no import); they must be the registry's."""
    import timm
    from stitchframe_timm.names import _from_registry, _from_sources

    assert _from_sources() == _from_registry(timm)
    assert {"tf_efficientnet_lite0", "deit_tiny_patch16_224"} <= _from_sources()


def test_validate_rejects_an_unknown_model_without_importing_torch(tmp_path):
    """``timm:tf_efficientnet_lite9`` fails at validate (exit 2, close matches), and validate imports no torch."""
    import subprocess
    import sys

    spec = tmp_path / "spec.yaml"
    spec.write_text("anchors: [timm:tf_efficientnet_lite0, timm:tf_efficientnet_lite9]\nstitch: {space: snnet}\n")
    code = ("import sys; from stitchframe.cli import main; code = main(['validate', sys.argv[1]]); "
            "print('heavy:', sorted(m for m in ('torch', 'timm') if m in sys.modules)); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "heavy: []" in proc.stdout
    err = " ".join(proc.stderr.split())
    assert "anchors[1] ('timm:tf_efficientnet_lite9'): Unknown timm model 'tf_efficientnet_lite9'" in err
    assert "close matches: tf_efficientnet_lite" in err and "tf_efficientnet_lite0" in err


def test_identifier_check_passes_tags_and_hub_models():
    from stitchframe_timm.names import check_timm_identifier

    check_timm_identifier("deit_tiny_patch16_224.fb_in1k")
    check_timm_identifier("hf-hub:timm/some-model")
    with pytest.raises(stitchframe.UnknownNameError, match="close matches: deit_tiny_patch16_224"):
        check_timm_identifier("deit_tiny_patch16_244")


def test_unsupported_model_class_lists_families(load):
    with pytest.raises(stitchframe.SpecError) as info:
        load("timm:convnext_atto", img_size=32)
    msg = str(info.value)
    assert "\n" not in msg
    assert "ConvNeXt" in msg
    for family in ("VisionTransformer", "SwinTransformer", "ResNet", "EfficientNet"):
        assert family in msg


def test_hf_hub_source_goes_to_timm_and_fails_offline_in_one_line(load):
    with pytest.raises(stitchframe.CheckpointError) as info:
        load("timm:hf-hub:timm/deit_tiny_patch16_224.fb_in1k")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'timm:hf-hub:timm/deit_tiny_patch16_224.fb_in1k'" in msg
    assert "options.weights" in msg


def test_pretrained_offline_is_one_line(load):
    with pytest.raises(stitchframe.CheckpointError) as info:
        load("timm:resnet18", pretrained=True)
    msg = str(info.value)
    assert "\n" not in msg and "pretrained: True" in msg and "options.weights" in msg


def test_rejected_model_kwargs(load):
    with pytest.raises(stitchframe.SpecError) as info:
        load("timm:resnet18", model_kwargs={"no_such_argument": 1})
    assert "no_such_argument" in str(info.value) and "model_kwargs" in str(info.value)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"model_kwargs": {"img_size": 32}}, ["img_size", "own option"]),
        ({"pretrained": True, "weights": "x.pth"}, ["pretrained", "weights"]),
        ({"key_map": "shapes"}, ["anchors[0].options.key_map", "auto"]),
        ({"img_size": 4}, ["anchors[0].options.img_size"]),
        ({"colour": "red"}, ["colour"]),
    ],
)
def test_bad_options_are_spec_errors(timm_regs, options, words):
    spec = stitchframe.parse_spec({"anchors": [{"source": "timm:resnet18", "options": options}]})
    with pytest.raises(stitchframe.SpecError) as info:
        stitchframe.load_anchor(spec.anchors[0], timm_regs, where="anchors[0]")
    msg = str(info.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("example", ["deit_tsb.yaml", "efficientnet_lite.yaml"])
def test_examples_validate(timm_regs, example):
    spec = stitchframe.load_spec(EXAMPLES / example)
    assert spec.data is not None and spec.data.name == "imagefolder"
    if "imagefolder" not in timm_regs.datasets:  # a core without the datasets plugin
        spec = attrs.evolve(spec, data=None)
    stitchframe.validate_spec(spec, timm_regs)


def test_efficientnet_lite_example_builds_offline(timm_regs):
    spec = stitchframe.load_spec(EXAMPLES / "efficientnet_lite.yaml")
    net = stitchframe.assemble(spec, timm_regs)
    assert len(net.routes) == 87
    assert {a.preprocess.input_size for a in net.anchors.values()} == {(3, 224, 224)}


def _network_only(monkeypatch):
    """The offline-mode variables unset, as on a machine whose user never heard of them; sockets stay blocked."""
    import huggingface_hub.constants
    import time

    for var in stitchframe.hub.HUB_OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    stitchframe.hub._probed.clear()

    def no_retry_waits(seconds):
        raise AssertionError(f"the Hub client waits {seconds} s to retry: offline mode was not switched on")

    monkeypatch.setattr(time, "sleep", no_retry_waits)


def test_pretrained_without_a_network_fails_at_once(load, monkeypatch):
    """No network and no HF_HUB_OFFLINE: the probe fails, offline mode skips the Hub client's minute of retries."""
    import huggingface_hub.constants

    _network_only(monkeypatch)
    with pytest.raises(stitchframe.CheckpointError) as info:
        load("timm:resnet18", pretrained=True)
    msg = str(info.value)
    assert "\n" not in msg and "unreachable" in msg and "options.weights" in msg
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored after the load
    assert "HF_HUB_OFFLINE" not in __import__("os").environ


def test_the_plugin_meets_the_contract():
    """``check_plugin``: documented options, a loader taking ``structure_only`` (stitchframe.AnchorLoader)."""
    from stitchframe.testing import check_plugin

    regs = check_plugin(stitchframe_timm, name="timm")
    assert regs.anchor_adapters.origin("timm") == "timm"
