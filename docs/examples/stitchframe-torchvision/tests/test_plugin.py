"""The plugin as users meet it: installed, found by entry point, driven by a spec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import stitchframe_torchvision
import torch

import stitchframe
from stitchframe.testing import check_plugin

SPEC = Path(__file__).parents[1] / "examples" / "mobilenet.yaml"


def stitchframe_command(*args: str) -> subprocess.CompletedProcess:
    """Run the ``stitchframe`` command as a user would (``python -m stitchframe`` in this environment)."""
    return subprocess.run([sys.executable, "-m", "stitchframe", *args], capture_output=True, text=True, timeout=120)


def test_plugin_conforms():
    regs = check_plugin(stitchframe_torchvision, name="torchvision")
    assert regs.anchor_adapters.origin("torchvision") == "torchvision"
    assert {"dwconv", "stagewise"} <= set(regs.stitch_layers.names()) | set(regs.stitch_spaces.names())


def test_found_through_the_entry_point():
    pm = stitchframe.get_plugin_manager()
    assert "torchvision" in pm.plugin_names() and pm.versions["torchvision"] == "0.1.0"
    proc = stitchframe_command("plugins")
    assert proc.returncode == 0, proc.stderr
    assert "torchvision" in json.dumps(json.loads(proc.stdout))


def test_the_example_spec_builds_calibrates_and_exports():
    proc = stitchframe_command("validate", str(SPEC))
    assert proc.returncode == 0, proc.stderr
    assert "OK (2 anchors, space 'stagewise', layer 'dwconv')" in proc.stdout
    spec = stitchframe.load_spec(SPEC)
    net = stitchframe.assemble(spec)
    # two anchors, 10 small->large routes, 13 large->small (large's one inner stage-0 cut has no partner)
    assert len(net.routes) == 2 + 10 + 13
    images = torch.randn(8, 3, 64, 64)
    stitchframe.calibrate(net, [images[:4], images[4:]])
    route = net.select_for(max_flops=net.routes[0].flops * 1.5)
    module = net.export(route).eval()
    net.eval()
    torch.testing.assert_close(module(images), net(images), rtol=0, atol=0)


def test_the_tutorial_specs():
    examples = SPEC.parent
    for name, layer in (("mobilenet_snnet.yaml", "conv1x1"), ("mobilenet_dwconv.yaml", "dwconv")):
        net = stitchframe.assemble(stitchframe.load_spec(examples / name))
        assert len(net.routes) == 18
        assert {link.layer for r in net.routes for link in r.links} == {layer}
    small_cuts = {r.segments[0].end for r in net.routes if not r.is_anchor}
    assert small_cuts == {1, 3, 5, 6, 7, 8, 9, 10, 11}  # tutorial 3: cut points 2 and 4 get no stitch
