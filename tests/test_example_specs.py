"""Every spec in examples/ parses (schema only: no plugin or model is loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

import stitchframe

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_spec_parses(path):
    spec = stitchframe.load_spec(path)
    assert spec.anchors and spec.stitch.space
    assert stitchframe.load_spec(path) == spec


def test_cross_space_options_of_the_examples_are_valid():
    regs = stitchframe.load_registries(stitchframe.get_plugin_manager(load_entrypoints=False))
    entry = regs.stitch_spaces.get("cross")
    for path in EXAMPLES:
        spec = stitchframe.load_spec(path)
        if spec.stitch.space == "cross":
            stitchframe.spec.structure_options(entry.options, spec.stitch.space_options, "stitch.space_options")
