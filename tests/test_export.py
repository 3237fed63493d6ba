"""Standalone routes (stitchframe.export): export from an SN-Net, reload alone, bit for bit, bytes read."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

import stitchframe
from stitchframe import CheckpointError, UnknownNameError, UsageError, export_route, load_route
from stitchframe.route_bn import route_bn_layers
from tests import tiny

VITS = ["tiny:vit32", {"source": "tiny:vit48", "options": {"seed": 1}},
        {"source": "tiny:vit64", "options": {"seed": 2}}]
MIXED = ["tiny:cnn16", {"source": "tiny:vit32", "options": {"seed": 1}}]


def _net(regs, anchors, space, **stitch):
    spec = stitchframe.parse_spec({"anchors": anchors, "stitch": {"space": space, **stitch}})
    return stitchframe.assemble(spec, regs).eval()


def _roundtrip(net, regs, tmp_path, rid, **kwargs):
    res = export_route(net, route=rid, dest=tmp_path / f"r{rid}.safetensors", registries=regs, **kwargs)
    return res, load_route(res.description, regs)


@pytest.mark.parametrize(
    ("anchors", "space", "stitch"),
    [
        (VITS, "snnet", {}),
        (VITS, "snnet2", {"layer": "lowrank"}),  # two-way routes, one anchor visited twice (L -> S -> L)
        (MIXED, "cross", {"space_options": {"points": 2}}),  # CNN <-> ViT: tokens <-> feature maps
    ],
    ids=["snnet", "snnet2", "cross"],
)
def test_routes_of_every_core_space_reload_alone_bit_for_bit(regs, tmp_path, anchors, space, stitch):
    net = _net(regs, anchors, space, **stitch)
    x = tiny.images(3)
    n = len(net.routes)
    revisits = [i for i, r in enumerate(net.routes) if len({s.anchor for s in r.segments}) < len(r.segments)]
    assert revisits or space != "snnet2"
    for rid in sorted({*range(0, n, max(1, n // 6)), n - 1, *revisits[:1]}):  # anchors, one and two stitches
        route = net.routes[rid]
        _, module = _roundtrip(net, regs, tmp_path, rid)
        assert module.route.describe() == route.describe() and not module.training
        with torch.no_grad():
            assert torch.equal(module(x), net.forward_route(x, rid)), route.describe()


def test_the_manifest_says_how_to_rebuild_the_route(regs, tmp_path):
    net = _net(regs, VITS, "snnet")
    rid = next(i for i, r in enumerate(net.routes) if r.links)
    res, _ = _roundtrip(net, regs, tmp_path, rid)
    desc = json.loads(res.description.read_text())
    route = net.routes[rid]
    assert desc["format"] == "stitchframe-route/2" and desc["route"]["name"] == route.describe()
    used = list(dict.fromkeys(s.anchor for s in route.segments))
    assert [a["name"] for a in desc["anchors"]] == used  # only the route's anchors
    assert desc["anchors"][1] == {"name": used[1], "source": "tiny:vit48", "options": {"seed": 1}}
    assert [s["layer"] for s in desc["stitches"]] == [link.layer for link in route.links]
    assert desc["stitches"][0]["src"]["channels"] == 32 and desc["stitches"][0]["dst"]["channels"] == 48
    assert desc["final_norm"] is True and desc["merged"] is False and desc["spec"] is None
    assert desc["preprocess"]["input_size"] == [3, 16, 16]


def test_merged_low_rank_routes_reload(regs, tmp_path):
    net = _net(regs, VITS, "snnet", layer="lowrank")
    rid = next(i for i, r in enumerate(net.routes) if r.links)
    with torch.no_grad():
        for layer in net.stitches.values():
            layer.lora_b.normal_()  # a trained update, so merging changes the weights
    res, module = _roundtrip(net, regs, tmp_path, rid, merge=True)
    x = tiny.images(3)
    with torch.no_grad():
        assert torch.equal(module(x), res.module(x))
        torch.testing.assert_close(module(x), net.forward_route(x, rid), rtol=1e-4, atol=1e-4)
    assert json.loads(res.description.read_text())["merged"] is True


def test_routes_keep_their_own_batchnorm_statistics(regs, tmp_path):
    net = _net(regs, ["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}], "snnet")
    stitchframe.recalibrate_route_bn(net, [tiny.images(8, seed=s) for s in (3, 4)])
    net.eval()
    rid = next(i for i, r in enumerate(net.routes) if r.links)
    _, module = _roundtrip(net, regs, tmp_path, rid)
    assert not route_bn_layers(module)
    bns = [m for m in module.segments[-1].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    own = [bn for bn in route_bn_layers(net) if bn.route_rows[rid] > 0]  # layers that run after the stitch
    assert bns and own
    assert any(not torch.equal(b.running_mean, bn.route_mean[0]) for b in bns for bn in own)  # not the anchor's row
    x = tiny.images(4)
    with torch.no_grad():
        assert torch.equal(module(x), net.forward_route(x, rid))


# ---------------------------------------------------------------------------
# only the route's bytes are read
# ---------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class FileOptions:
    """Options of the ``filetiny`` test adapter."""

    weights: str = attrs.field(metadata={"help": "The safetensors file holding the model's state dict."})


def _read_state(path: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as fh:  # read(), so /proc/self/io's rchar counts every byte
        return load_bytes(fh.read())


def _file_loader(structure_aware: bool):
    """A loader reading its weights from a file; ``structure_aware=False``: one that ignores ``structure_only``."""

    def load(identifier: str, options: FileOptions, registries=None, *,
             structure_only: bool = False) -> stitchframe.Anchor:
        model = tiny.TinyViT(dim=int(identifier.removeprefix("vit")), depth=4, heads=2).eval()
        if not (structure_only and structure_aware):
            model.load_state_dict(_read_state(options.weights))  # on the meta device: read, then dropped
        return tiny.vit_anchor(model, identifier)

    return load


def _file_regs(structure_aware: bool):
    class FilePlugin:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_register_anchor_adapters(register):
            register("filetiny", _file_loader(structure_aware), options=FileOptions)

    pm = stitchframe.get_plugin_manager(load_entrypoints=False)
    pm.register_plugin(FilePlugin, name="filetiny")
    return stitchframe.load_registries(pm)


def _rchar() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # the loader that ignores the flag
@pytest.mark.parametrize("structure_aware", [True, False], ids=["structure_only", "ignores_structure_only"])
def test_loading_reads_only_the_routes_own_bytes(tmp_path, structure_aware):
    files = {}
    for i, dim in enumerate((32, 48, 64)):
        files[dim] = tmp_path / f"vit{dim}.safetensors"
        save_file(tiny.tiny_vit(dim, seed=i).state_dict(), str(files[dim]))
    regs = _file_regs(structure_aware)
    net = _net(regs, [{"source": f"filetiny:vit{d}", "options": {"weights": str(f)}} for d, f in files.items()],
               "snnet")
    rid = net.routes.index_of("vit32[0:2] -> linear -> vit48[2:4]")
    res = export_route(net, route=rid, dest=tmp_path / "out" / "route.safetensors", registries=regs)
    with safe_open(str(res.weights), framework="pt") as fh:
        stored = {name: fh.get_slice(name).get_shape() for name in fh.keys()}
    own = {**res.module.state_dict()}
    assert set(stored) == set(own)  # the file holds the route's tensors, nothing else
    route_bytes = sum(t.numel() * t.element_size() for t in own.values())
    assert route_bytes < sum(f.stat().st_size for f in files.values()) / 2
    load_route(res.description, regs)  # imports and caches warmed: the measured call reads files only
    before = _rchar()
    module = load_route(res.description, regs)
    read = _rchar() - before
    x = tiny.images(3)
    with torch.no_grad():
        assert torch.equal(module(x), net.forward_route(x, rid))
    manifest = res.description.stat().st_size
    if structure_aware:  # the manifest by read(), the route's tensors (mapped) from its own file: no anchor file
        assert read < manifest + 1024
        assert res.weights.stat().st_size < route_bytes + 16 * 1024
    else:  # a loader that ignores the flag still loads right, but reads the files of the route's anchors
        assert read >= files[32].stat().st_size + files[48].stat().st_size
        assert read < files[32].stat().st_size + files[48].stat().st_size + files[64].stat().st_size


# ---------------------------------------------------------------------------
# structure-only loading through the hook API
# ---------------------------------------------------------------------------
def test_load_anchor_builds_structure_only_on_the_meta_device(regs):
    calls = []

    def loader(identifier, options, registries, *, structure_only=False):
        calls.append((structure_only, torch.empty(1).device.type))
        return tiny.load_tiny(identifier, options, registries, structure_only=structure_only)

    entry = regs.anchor_adapters.get("tiny")
    regs.anchor_adapters.register("meta_probe", loader, options=entry.options, plugin="test")
    anchor = stitchframe.load_anchor("meta_probe:vit32", regs, structure_only=True)
    assert calls == [(True, "meta")] and all(p.is_meta for p in anchor.parameters())
    assert anchor.structure == ("meta_probe:vit32", {})
    stitchframe.load_anchor("meta_probe:vit32", regs)
    assert calls[-1] == (False, "cpu")


def test_an_adapter_may_record_another_structure_source(regs, tmp_path):
    def loader(identifier, options, registries, *, structure_only=False):
        anchor = tiny.load_tiny(identifier, options, registries, structure_only=structure_only)
        anchor.structure = ("tiny:" + identifier, {"seed": 7})  # what rebuilds it without its files
        return anchor

    entry = regs.anchor_adapters.get("tiny")
    regs.anchor_adapters.register("indirect", loader, options=entry.options, plugin="test")
    net = _net(regs, ["indirect:vit32", {"source": "tiny:vit48", "options": {"seed": 1}}], "snnet")
    rid = next(i for i, r in enumerate(net.routes) if r.links)
    res, module = _roundtrip(net, regs, tmp_path, rid)
    assert json.loads(res.description.read_text())["anchors"][0]["source"] == "tiny:vit32"
    x = tiny.images(2)
    with torch.no_grad():
        assert torch.equal(module(x), net.forward_route(x, rid))


# ---------------------------------------------------------------------------
# errors, all before anything is written
# ---------------------------------------------------------------------------
def test_an_anchor_that_records_no_structure_is_refused_before_writing(regs, vit_family, tmp_path):
    net = stitchframe.build_snnet(vit_family, registries=regs)
    with pytest.raises(UsageError, match="records no structure"):
        export_route(net, route=5, dest=tmp_path / "x" / "r.safetensors", registries=regs)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    with pytest.raises(UsageError, match="needs dest="):
        export_route(net, route=5, registries=regs)


def test_a_failing_pt2_export_leaves_no_file_behind(regs, tmp_path, monkeypatch):
    net = _net(regs, VITS, "snnet")

    def fail(*args, **kwargs):
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr(torch.export, "export", fail)
    with pytest.raises(stitchframe.StitchframeError, match="tracer exploded"):
        export_route(net, route=3, dest=tmp_path / "e" / "r.safetensors", registries=regs, pt2=True)
    assert list((tmp_path / "e").iterdir()) == []


def test_loading_names_what_is_missing_or_stale(regs, tmp_path):
    net = _net(regs, VITS, "snnet")
    res, _ = _roundtrip(net, regs, tmp_path, 4)
    bare = stitchframe.load_registries(stitchframe.get_plugin_manager(load_entrypoints=False))
    with pytest.raises(UnknownNameError, match="tiny"):
        load_route(res.description, bare)  # the adapter the manifest names is not installed
    desc = json.loads(res.description.read_text())
    res.description.write_text(json.dumps({**desc, "format": "stitchframe-route/1"}))
    with pytest.raises(CheckpointError, match="older stitchframe"):
        load_route(res.weights, regs)
    res.description.write_text(json.dumps({**desc, "anchors": desc["anchors"][:1]}))
    with pytest.raises(CheckpointError, match="does not fit the anchors"):
        load_route(res.weights, regs)
    res.description.write_text(json.dumps({**desc, "stitches": None}))
    with pytest.raises(CheckpointError, match="malformed"):
        load_route(res.weights, regs)
