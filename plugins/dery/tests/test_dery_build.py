"""The dery space inside `stitchframe build`: probe data from the build, routes reloaded without data."""

from __future__ import annotations

import pytest
import torch

import stitchframe
from stitchframe import build, load_snnet
from tests import tiny


def test_build_gives_the_space_real_probe_data_and_reloads_its_routes(tmp_path, dery_regs):
    spec = stitchframe.parse_spec(
        {
            "anchors": ["tiny:cnn16", "tiny:vit32", {"source": "tiny:vit48", "options": {"seed": 2}}],
            "stitch": {
                "space": "dery",
                "space_options": {"stages": 2, "probe": "given", "top": 2, "proxies": ["naswot"]},
            },
            "calibration": {"batches": 2},
            "data": {"name": "synthetic", "img_size": 16, "options": {"train_size": 64, "val_size": 32}},
            "train": {"epochs": 0},
            "eval": {"batch_size": 32},
        }
    )
    result = build(spec, output=tmp_path / "out", registries=dery_regs)
    chosen = [r for r in result.snnet.routes if r.meta.get("probe")]
    assert chosen and all(r.meta["probe"] == "given" for r in chosen)
    reloaded = load_snnet(tmp_path / "out", registries=dery_regs)
    assert [r.describe() for r in reloaded.routes] == [r.describe() for r in result.snnet.routes]
    x = tiny.images(4)
    for i in range(len(reloaded.routes)):
        assert torch.equal(reloaded.forward_route(x, i), result.snnet.eval().forward_route(x, i))


def test_a_reassembled_route_exports_and_reloads_without_probe_data(tmp_path, dery_regs):
    """Rebuilding the whole SN-Net of a ``probe: given`` build needs its data; a standalone route does not."""
    spec = stitchframe.parse_spec(
        {
            "anchors": ["tiny:cnn16", "tiny:vit32", {"source": "tiny:vit48", "options": {"seed": 2}}],
            "stitch": {"space": "dery", "space_options": {"stages": 2, "probe": "given", "top": 1,
                                                          "proxies": ["naswot"]}},
            "calibration": {"batches": 1},
            "data": {"name": "synthetic", "img_size": 16, "options": {"train_size": 32, "val_size": 16}},
            "train": {"epochs": 0},
            "eval": {"batch_size": 16},
        }
    )
    result = build(spec, output=tmp_path / "out", registries=dery_regs)
    net = result.snnet.eval()
    rid = next(i for i, r in enumerate(net.routes) if r.meta.get("kind") == "dery")
    res = stitchframe.export_route(tmp_path / "out", route=rid, registries=dery_regs)
    assert res.weights == tmp_path / "out" / "exports" / f"route{rid}.safetensors"
    with pytest.raises(stitchframe.SpecError, match="no probe data reached"):
        stitchframe.assemble(spec, dery_regs)  # what loading used to do
    module = stitchframe.load_route(res.description, dery_regs)
    x = tiny.images(4)
    with torch.no_grad():
        assert torch.equal(module(x), net.forward_route(x, rid))
