from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from stitchframe import CheckpointError, build_snnet, load_module_state, load_registries, save_module
from stitchframe.io import atomic_write, read_json, read_metadata, write_json
from tests import tiny


def _net():
    anchors = [tiny.vit_anchor(tiny.tiny_vit(d, seed=i), f"vit{d}") for i, d in enumerate((32, 48))]
    return build_snnet(anchors, space="snnet", registries=load_registries())


def test_snnet_round_trip_with_metadata(tmp_path):
    net = _net()
    path = save_module(net, tmp_path / "snnet.safetensors", kind="snnet", metadata={"routes": net.routes.to_list()})
    other = _net()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    meta = load_module_state(other, path, kind="snnet")
    assert json.loads(meta["routes"])[0]["name"] == "vit32[0:4]"
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_shared_tensors_are_stored_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    def roundtrip(tmp):
        m = Tied()
        path = save_module(m, tmp / "t.safetensors", kind="route")
        fresh = Tied()
        load_module_state(fresh, path)
        assert torch.equal(fresh.b.weight, m.a.weight) and fresh.b.weight is fresh.a.weight
        return json.loads(read_metadata(path)["aliases"])

    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        assert roundtrip(pathlib.Path(d)) == {"b.weight": "a.weight"}


def test_mismatched_truncated_and_foreign_files_name_the_file_and_tensor(tmp_path):
    net = _net()
    path = save_module(net, tmp_path / "w.safetensors", kind="snnet")
    small = build_snnet([tiny.vit_anchor(tiny.tiny_vit(32), "vit32")], space="anchors", registries=load_registries())
    with pytest.raises(CheckpointError, match=r"has tensor 'anchors.vit48"):
        load_module_state(small, path)
    with pytest.raises(CheckpointError, match="holds a 'snnet', expected a 'route'"):
        load_module_state(net, path, kind="route")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="t.safetensors"):
        load_module_state(net, truncated)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_module_state(net, garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_module_state(net, tmp_path / "nope.safetensors")


def test_shape_mismatch_names_the_tensor(tmp_path):
    a = nn.Linear(3, 4)
    path = save_module(a, tmp_path / "a.safetensors", kind="route")
    with pytest.raises(CheckpointError, match=r"tensor '(weight|bias)' has shape \(4, ?3?\), the model expects \(5, ?3?\)"):
        load_module_state(nn.Linear(3, 5), path)
    with pytest.raises(CheckpointError, match="lacks 1 tensor"):
        load_module_state(nn.Linear(3, 4, bias=True), save_module(nn.Linear(3, 4, bias=False), tmp_path / "b.safetensors", kind="route"))


def test_non_finite_weights_are_refused(tmp_path):
    a = nn.Linear(2, 2)
    with torch.no_grad():
        a.weight[0, 0] = float("nan")
    path = save_module(a, tmp_path / "nan.safetensors", kind="route")
    with pytest.raises(CheckpointError, match="NaN"):
        load_module_state(nn.Linear(2, 2), path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})

    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write('{"v": 2')  # half written
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    target.write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(target)
    assert not os.path.exists(tmp_path / "missing.json")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_json(tmp_path / "missing.json")


def test_atomic_write_gives_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        paths = [write_json(tmp_path / "p.json", {}),
                 save_module(nn.Linear(2, 2), tmp_path / "m.safetensors", kind="test")]  # safetensors writes 0600
    finally:
        os.umask(umask)
    assert [p.stat().st_mode & 0o777 for p in paths] == [0o644, 0o644]


def test_non_persistent_buffers_travel_on_request(tmp_path):
    class WithTable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.register_buffer("table", torch.arange(4.0).exp(), persistent=False)
            self.register_buffer("mask", torch.tensor([0.0, float("-inf")]), persistent=False)

    src = WithTable()
    save_module(src, tmp_path / "plain.safetensors", kind="route")
    save_module(src, tmp_path / "all.safetensors", kind="route", non_persistent=True)
    with torch.device("meta"):
        dst = WithTable()
    dst.to_empty(device="cpu")
    with pytest.raises(CheckpointError, match="has tensor '(table|mask)', which the model lacks"):
        load_module_state(dst, tmp_path / "all.safetensors", kind="route")  # by default only the state dict
    load_module_state(dst, tmp_path / "all.safetensors", kind="route", non_persistent=True)  # -inf is allowed here
    assert torch.equal(dst.table, src.table) and torch.equal(dst.mask, src.mask)
    assert torch.equal(dst.lin.weight, src.lin.weight)
    with pytest.raises(CheckpointError, match="lacks 2 tensor"):
        load_module_state(dst, tmp_path / "plain.safetensors", kind="route", non_persistent=True)
