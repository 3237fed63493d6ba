"""The dery space inside `stitchframe build`: probe data from the build, routes reloaded without data."""

from __future__ import annotations

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
